"""A job that no healthy backend can take yet waits, visibly and without using an attempt; attempts are spent
on real failures."""

from __future__ import annotations

import asyncio

from comfyflow.core.backend_state import Health
from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done


async def test_job_waits_for_a_backend_coming_up_without_spending_an_attempt(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(
        backends=[fake.url], backend_probe_seconds=0.5, backend_down_after=1, backend_up_after=2, max_attempts=3
    )
    fake.faults.refuse = True
    assert await rt.pool.probe(fake.url) is Health.DOWN  # ComfyUI was down at the first probe
    fake.faults.refuse = False  # now it answers, but the pool trusts it only after two passing probes
    stop = asyncio.Event()
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            current = await rt.store.get(job.job_id)
            assert current is not None and current.attempt == 1, current
            if current.progress.phase == "waiting_for_backend":
                break  # visible in its status
            assert loop.time() < deadline, f"the job never showed that it waits for a backend: {current}"
            await asyncio.sleep(0.05)
        assert current.status == JobState.RUNNING
        prober = asyncio.create_task(rt.pool.run(stop, name="prober"))
        try:
            done = await wait_done(rt, job.job_id, timeout=30)
        finally:
            stop.set()
            await asyncio.wait_for(prober, timeout=10)
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.attempt == 1, "no attempt is spent while no healthy backend can take the job"


async def test_the_wait_is_bounded(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], backend_down_after=1, backend_wait_seconds=0.5, max_attempts=2)
    fake.faults.refuse = True
    assert await rt.pool.probe(fake.url) is Health.DOWN
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
        done = await wait_done(rt, job.job_id, timeout=30)
    assert done.status == JobState.FAILED and done.error is not None
    assert done.error.code == "BACKEND_UNAVAILABLE" and done.attempt == 2, done.error
