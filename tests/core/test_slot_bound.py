"""The slot bound holds when an attempt is lost or released while its prompt stays in ComfyUI: the slot stays
taken until the next attempt takes it over, so no other job's prompt joins the backend's queue meanwhile.

This is what made tests/scale/test_scale_out.py flaky under load: a worker slower than its job lease lost the
attempt, the lost attempt freed its slot while its prompt kept running, and another job took the slot."""

from __future__ import annotations

import asyncio

from comfyflow.core.reaper import Reaper
from comfyflow.core.worker import Worker
from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done
from tests.waiting import until


async def _watch_bound(rt, fake, violations: list[str], stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    """Record every moment a prompt sits in the fake while no slot of it is taken."""
    while not stop.is_set():
        queue = fake.state()["queue"]
        in_flight = len(queue["running"]) + len(queue["pending"])
        if in_flight > await rt.slots.in_use(fake.url):
            violations.append(f"{in_flight} prompts in ComfyUI, fewer slots taken")
        await asyncio.sleep(0.005)


async def test_a_lost_attempt_keeps_its_slot_for_the_next_one(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 1.5
    rt = await runtime_factory(backends=[fake.url], backend_slots=1, lease_seconds=5.0, slot_lease_seconds=20.0)
    violations: list[str] = []
    stop = asyncio.Event()
    async with running_worker(rt, concurrency=2):
        first = (await rt.store.submit(Txt2ImgRequest(prompt="first", steps=5, width=64, height=64))).job
        second = (await rt.store.submit(Txt2ImgRequest(prompt="second", steps=5, width=64, height=64))).job
        assert first is not None and second is not None

        async def posted() -> bool:
            return bool(fake.prompts_posted)

        await until(posted)
        watcher = asyncio.create_task(_watch_bound(rt, fake, violations, stop))
        # As if this worker had been too slow to renew its job lease: another worker's reaper reclaims it.
        reclaimed = await Reaper(rt.store, "another-worker").run_once(min_idle_ms=0)
        assert reclaimed.get("retry", 0) + reclaimed.get("queued", 0) >= 1, reclaimed
        done = [await wait_done(rt, j.job_id, timeout=60) for j in (first, second)]
        stop.set()
        await watcher
    assert [j.status for j in done] == [JobState.SUCCEEDED] * 2, [j.error for j in done]
    assert done[0].attempt >= 2, "the first job was lost and taken over"
    assert not violations, violations[:3]
    assert fake.max_in_flight <= 1, "a backend with one slot held two prompts"
    assert set(fake.prompts_posted.values()) == {1}, "the next attempt attached instead of posting again"
    assert await rt.slots.in_use(fake.url) == 0


async def test_a_worker_shut_down_mid_render_leaves_the_slot_to_the_next_attempt(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 2.0
    rt = await runtime_factory(backends=[fake.url], backend_slots=1, slot_lease_seconds=20.0)
    job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=5, width=64, height=64))).job
    assert job is not None
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(rt).run(stop, grace=0.05))

    async def posted() -> bool:
        return bool(fake.prompts_posted)

    await until(posted)
    stop.set()
    await asyncio.wait_for(task, timeout=20)
    queue = fake.state()["queue"]
    assert queue["running"] or queue["pending"], "the prompt is still in ComfyUI"
    assert await rt.slots.in_use(fake.url) == 1, "its slot stays taken while it is"
    async with running_worker(rt):
        done = await wait_done(rt, job.job_id, timeout=60)
    assert done.status == JobState.SUCCEEDED and done.attempt == 2
    assert list(fake.prompts_posted.values()) == [1]
    assert await rt.slots.in_use(fake.url) == 0
