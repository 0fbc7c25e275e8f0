"""A backend's queue depth follows its render time: one running prompt plus as many waiting as cover
``backend_queue_seconds`` of rendering, never fewer than its slots, never more than ``backend_max_slots``; a
backend of one slot keeps one. At 0.1 s renders on four backends a fixed depth of 2 left the GPUs idle a fifth of
the time while comfyflow handed a freed slot to the next prompt (benchmarks/bench_prefect.py)."""

from __future__ import annotations

from redis.asyncio import Redis

from comfyflow.core.keys import Keys
from comfyflow.core.slots import SlotPool
from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done


def _pool(queue_seconds: float = 0.25, max_slots: int = 6) -> SlotPool:
    """A pool whose depth rule is checked without Redis (the client never connects here)."""
    return SlotPool(Redis(), Keys("depth"), {"fast": 2, "single": 1}, lease_seconds=30,
                    queue_seconds=queue_seconds, max_slots=max_slots)  # fmt: skip


def test_depth_covers_the_queue_seconds_of_measured_renders() -> None:
    pool = _pool()
    assert pool.capacity("fast") == 2, "nothing measured yet: the configured slots"
    pool.observe_render("fast", 0.1)
    assert pool.capacity("fast") == 4, "1 running + 3 waiting cover 0.25 s of 0.1 s renders"
    for _ in range(40):  # renders slow down: the running average follows
        pool.observe_render("fast", 2.0)
    assert pool.capacity("fast") == 2, "slow renders: never fewer than the configured slots"
    for _ in range(40):
        pool.observe_render("fast", 0.001)
    assert pool.capacity("fast") == 6, "bounded by max_slots"
    pool.observe_render("single", 0.01)
    assert pool.capacity("single") == 1, "one slot: nothing waits in that ComfyUI"
    pool.observe_render("fast", 0.0)  # an empty measurement changes nothing
    assert pool.capacity("fast") == 6


def test_queue_seconds_zero_keeps_the_slots_fixed() -> None:
    pool = _pool(queue_seconds=0)
    pool.observe_render("fast", 0.01)
    assert pool.capacity("fast") == 2


async def test_the_acquire_script_holds_the_measured_depth(runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=["http://127.0.0.1:1"])
    url = next(iter(rt.slots.capacities))
    rt.slots.observe_render(url, 0.1)
    held = [await rt.slots.try_acquire([url]) for _ in range(4)]
    assert all(held), "four prompts: the measured depth"
    assert await rt.slots.try_acquire([url]) is None, "no fifth"
    for lease in held:
        await rt.slots.release(lease)  # type: ignore[arg-type]


async def test_fast_renders_deepen_the_backends_queue(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 0.02
    # a whole second to cover: still more than 2 deep when a busy machine stretches the measured renders to 0.5 s
    rt = await runtime_factory(backends=[fake.url], backend_slots=2, backend_queue_seconds=1.0)
    async with running_worker(rt, concurrency=8):
        first = (await rt.store.submit(Txt2ImgRequest(prompt="warm", steps=2, width=64, height=64))).job
        assert (await wait_done(rt, first.job_id, timeout=60)).status == JobState.SUCCEEDED  # one render measured
        assert rt.slots.render_seconds.get(fake.url), "the render's execution time was measured"
        jobs = [(await rt.store.submit(Txt2ImgRequest(prompt=f"fox {i}", steps=2, width=64, height=64))).job
                for i in range(16)]  # fmt: skip
        done = [await wait_done(rt, j.job_id, timeout=120) for j in jobs]
    assert [j.status for j in done] == [JobState.SUCCEEDED] * 16
    assert rt.slots.capacity(fake.url) > 2
    assert 2 < fake.max_in_flight <= rt.settings.backend_max_slots, fake.max_in_flight
