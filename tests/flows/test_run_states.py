"""Every way an attempt ends shows in Prefect as the matching flow-run state: succeeded -> Completed, failed ->
Failed with the typed error as message, canceled -> Cancelled, worker lost -> Crashed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from comfyflow.core.attempt import AttemptContext
from comfyflow.core.queue import QueueReader
from comfyflow.core.runtime import Runtime
from comfyflow.core.worker import Worker
from comfyflow.embedded import ServiceURLs
from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.service import runner_for
from tests.core.conftest import wait_done
from tests.flows.test_generate_flow import _wait_state, with_flow_run
from tests.prefect_runs import task_runs

pytestmark = pytest.mark.prefect


@contextlib.asynccontextmanager
async def executor_for(rt: Runtime, redis_url: str, api_url: str) -> AsyncIterator[Any]:
    stop = asyncio.Event()
    async with runner_for(rt, ServiceURLs(redis_url, api_url), stop) as executor:
        try:
            yield executor
        finally:
            stop.set()


@contextlib.asynccontextmanager
async def worker(rt: Runtime, executor: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(rt, runner=executor, reaper_interval=0.2).run(stop, grace=2))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_succeeded_failed_and_canceled_jobs_end_their_runs_completed_failed_and_cancelled(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    async with executor_for(rt, server_redis_url, prefect_api_url) as executor, worker(rt, executor):
        ok = await wait_done(rt, (await rt.store.submit(Txt2ImgRequest(prompt="ok", steps=2))).job.job_id)
        ok = await with_flow_run(rt, ok)

        fake.faults.fail_node_types = {"KSampler"}  # a runtime error in ComfyUI: permanent, fails at once
        bad = await wait_done(rt, (await rt.store.submit(Txt2ImgRequest(prompt="bad", steps=2))).job.job_id)
        bad = await with_flow_run(rt, bad)
        fake.faults.fail_node_types = set()

        fake.render_time = 8.0
        slow = (await rt.store.submit(Txt2ImgRequest(prompt="slow", steps=8))).job
        for _ in range(300):
            cur = await rt.store.get(slow.job_id)
            if cur is not None and cur.flow_run_id and cur.progress.phase == "rendering":
                break
            await asyncio.sleep(0.05)
        assert await rt.store.cancel(slow.job_id) == "requested"  # what DELETE /api/v1/jobs/{id} does
        canceled = await with_flow_run(rt, await wait_done(rt, slow.job_id, timeout=15))

    assert ok.status == JobState.SUCCEEDED and ok.flow_run_id
    completed = await _wait_state(ok.flow_run_id, "Completed")
    assert "artifact(s) from" in (completed.state.message or "")

    assert bad.status == JobState.FAILED and bad.error is not None and bad.flow_run_id
    failed = await _wait_state(bad.flow_run_id, "Failed")
    assert failed.state.message == f"{bad.error.code}: {bad.error.message}"
    tasks = {t.name.rsplit("-", 1)[0]: t for t in await task_runs(failed.id, 3)}
    assert tasks["render"].state.is_failed() and tasks["render"].state.message == failed.state.message
    assert "store" not in tasks  # the flow stopped at the step that failed, as Prefect's engine would

    assert canceled.status == JobState.CANCELED and canceled.flow_run_id
    cancelled = await _wait_state(canceled.flow_run_id, "Cancelled")
    assert cancelled.state.message == "canceled by request"
    tasks = {t.name.rsplit("-", 1)[0]: t for t in await task_runs(cancelled.id, 3)}
    assert tasks["render"].state.is_cancelled()
    assert fake.interrupts, "the cancel reached ComfyUI"


async def _ghost_attempt(rt: Runtime, executor: Any) -> tuple[str, str]:
    """Claim the next job as a worker that then dies without a word: its flow run is Running, nobody beats."""
    reader = QueueReader(rt.redis, rt.store.keys, "ghost", rt.settings.priority_weights)
    msg = await reader.next(block_ms=2000)
    assert msg is not None
    claim = await rt.store.claim(msg, "ghost")
    assert claim is not None
    job = await rt.store.get(claim.job_id)
    assert job is not None
    run = await executor.open_run(AttemptContext(rt, claim, job, await rt.store.raw(claim.job_id)))
    assert run.state.is_running()
    return claim.job_id, str(run.id)


async def test_a_lost_workers_run_ends_crashed_and_the_next_attempt_completes(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)  # leases of 2 s
    async with executor_for(rt, server_redis_url, prefect_api_url) as executor:
        await rt.store.submit(Txt2ImgRequest(prompt="orphan", steps=2))
        job_id, lost_run = await _ghost_attempt(rt, executor)
        async with worker(rt, executor):  # its reaper reclaims the job once the ghost's lease lapses
            done = await wait_done(rt, job_id, timeout=30)
            for _ in range(200):  # attempt 2's run, once Prefect has made it
                if done.flow_run_id != lost_run:
                    break
                await asyncio.sleep(0.05)
                done = await rt.store.get(job_id)
    assert done.status == JobState.SUCCEEDED and done.attempt == 2
    crashed = await _wait_state(lost_run, "Crashed")
    assert "worker lost" in (crashed.state.message or "")
    assert done.flow_run_id != lost_run
    await _wait_state(done.flow_run_id, "Completed")


async def test_a_lost_workers_last_attempt_ends_crashed_without_a_next_attempt(
    prefect_api_url, fake, runtime_factory, server_redis_url, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import flows.executor

    monkeypatch.setattr(flows.executor, "RECONCILE_EVERY", 1)  # look at Running runs every second
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True, max_attempts=1)
    async with executor_for(rt, server_redis_url, prefect_api_url) as executor:
        await rt.store.submit(Txt2ImgRequest(prompt="orphan", steps=2))
        job_id, lost_run = await _ghost_attempt(rt, executor)
        async with worker(rt, executor):
            done = await wait_done(rt, job_id, timeout=30)
            assert done.status == JobState.FAILED and done.error is not None and done.error.code == "WORKER_LOST"
            crashed = await _wait_state(lost_run, "Crashed", timeout=30)
    assert "worker lost" in (crashed.state.message or "")


async def test_jobs_run_at_full_speed_when_prefect_goes_away(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    """Prefect down after the workers started: every job still succeeds; only its records are missing."""
    from prefect.client.orchestration import PrefectClient

    from comfyflow.testing.api_server import free_port

    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    async with executor_for(rt, server_redis_url, prefect_api_url) as executor:
        live = executor.client
        executor.client = PrefectClient(f"http://127.0.0.1:{free_port()}/api")  # nothing listens there
        await executor.client.__aenter__()
        try:
            async with worker(rt, executor):
                jobs = [(await rt.store.submit(Txt2ImgRequest(prompt=f"p{i}", steps=2))).job for i in range(3)]
                done = [await wait_done(rt, j.job_id, timeout=30) for j in jobs]
        finally:
            await executor.client.__aexit__(None, None, None)
            executor.client = live
    assert all(d.status == JobState.SUCCEEDED for d in done), [d.error for d in done]
    assert all(d.flow_run_id is None for d in done)
