"""SIGTERM with every slot busy: claim nothing more; a release never uses up one of the job's attempts.
And retries back off with jitter."""

from __future__ import annotations

import asyncio

from comfyflow.core.worker import Worker, backoff
from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done
from tests.waiting import until


async def test_stop_with_every_slot_busy_claims_nothing_more(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 1.0
    rt = await runtime_factory(backends=[fake.url])
    first = (await rt.store.submit(Txt2ImgRequest(prompt="one", steps=2))).job
    second = (await rt.store.submit(Txt2ImgRequest(prompt="two", steps=2))).job
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(rt, concurrency=1).run(stop, grace=20))
    await until(lambda: len(fake.prompts_posted) == 1)
    stop.set()  # what SIGTERM does
    await asyncio.wait_for(task, timeout=40)
    done = await rt.store.get(first.job_id)
    assert done is not None and done.status == JobState.SUCCEEDED, done  # finished within the grace period
    waiting = await rt.store.get(second.job_id)
    assert waiting is not None and waiting.status == JobState.QUEUED and waiting.attempt == 1, waiting
    assert len(fake.prompts_posted) == 1, "a stopping worker must not start another job"
    async with running_worker(rt):  # and it is still on the queue for the next worker
        assert (await wait_done(rt, second.job_id)).status == JobState.SUCCEEDED


async def test_release_on_shutdown_never_uses_up_the_last_attempt(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 2.0
    rt = await runtime_factory(backends=[fake.url], max_attempts=1)
    job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(rt, concurrency=1).run(stop, grace=0.1))
    await until(lambda: bool(fake.prompts_posted))
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    released = await rt.store.get(job.job_id)
    assert released is not None and released.status == JobState.QUEUED, released.error if released else None
    assert released.attempt == 2 and released.max_attempts == 2
    async with running_worker(rt):
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED, done.error
    assert list(fake.prompts_posted.values()) == [1], "the next attempt adopts the released prompt"


def test_retry_backoff_has_jitter(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(retry_backoff_seconds=2.0, retry_backoff_max_seconds=60.0)
    for attempt, full in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)):
        delays = {backoff(settings, attempt) for _ in range(50)}
        assert len(delays) > 40, "jobs that failed together must not all retry at the same instant"
        assert all(full / 2 <= d <= full for d in delays), (attempt, min(delays), max(delays))


def test_queue_read_backoff_grows_with_jitter_and_resets() -> None:
    from comfyflow.core.redis_conn import Backoff

    retry = Backoff(base=0.2, cap=5.0)
    first = [Backoff(base=0.2, cap=5.0).next() for _ in range(50)]
    assert len(set(first)) > 40 and all(0.1 <= d <= 0.2 for d in first)
    delays = [retry.next() for _ in range(12)]
    assert all(0.1 <= d <= 5.0 for d in delays) and max(delays[6:]) > 0.4, delays
    retry.reset()
    assert retry.next() <= 0.2
