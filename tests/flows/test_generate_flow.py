"""Each attempt is a Prefect flow run created from the ``generate`` deployment and run in-process; Retry and
Cancel pressed in the Prefect UI (done here through Prefect's API, as the UI does) become comfyflow actions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.states import AwaitingRetry, Cancelling

from comfyflow.core.runtime import Runtime
from comfyflow.core.worker import Worker
from comfyflow.embedded import ServiceURLs
from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.service import runner_for
from flows.generate import acquire_slot, render, store, validate
from tests.core.conftest import wait_done
from tests.prefect_runs import task_runs

pytestmark = pytest.mark.prefect


@contextlib.asynccontextmanager
async def prefect_worker(rt: Runtime, redis_url: str, api_url: str) -> AsyncIterator[Any]:
    stop = asyncio.Event()
    async with runner_for(rt, ServiceURLs(redis_url, api_url), stop) as runner:
        assert runner is not None
        task = asyncio.create_task(Worker(rt, runner=runner).run(stop, grace=2))
        try:
            yield runner
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def _flow_run(run_id: str) -> Any:
    async with get_client() as client:
        return await client.read_flow_run(UUID(run_id))


async def with_flow_run(rt: Runtime, job: Any, timeout: float = 20) -> Any:
    """The job once it names its flow run (created beside the attempt: it may land after the job ended)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not job.flow_run_id:
        assert loop.time() < deadline, f"job {job.job_id} never named its flow run"
        await asyncio.sleep(0.05)
        job = await rt.store.get(job.job_id)
    return job


async def _wait_state(run_id: str, name: str, timeout: float = 15) -> Any:
    for _ in range(int(timeout / 0.1)):
        run = await _flow_run(run_id)
        if run.state and run.state.name == name:
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"flow run {run_id} is {run.state.name if run.state else None}, not {name}")


async def test_attempt_is_a_flow_run_from_the_deployment(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    async with prefect_worker(rt, server_redis_url, prefect_api_url) as executor:
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2, priority="high", labels=["demo"]))).job
        done = await with_flow_run(rt, await wait_done(rt, job.job_id))
    assert done.status == JobState.SUCCEEDED, done.error
    run = await _wait_state(done.flow_run_id, "Completed")
    assert run.deployment_id == executor.deployment_id
    assert run.name == f"{job.job_id[:12]}-attempt-1"
    assert {"priority:high", "label:demo", f"backend:{fake.url.split('//')[1]}"} <= set(run.tags)
    assert run.parameters == {"job_id": job.job_id, "attempt": 1}
    tasks = await task_runs(run.id, 4)
    by_name = {t.name.rsplit("-", 1)[0]: t for t in tasks}
    assert sorted(by_name) == ["acquire_slot", "render", "store", "validate"]
    assert all(t.state and t.state.is_completed() for t in tasks)
    steps = [by_name[n] for n in ("validate", "acquire_slot", "render", "store")]
    # real timings: each step ran after the one before, inside the flow run's span (the run is created while
    # validate already runs, so that nothing waits for Prefect: only validate may start before the run's start)
    assert run.start_time <= steps[1].start_time
    for before, after in itertools.pairwise(steps):
        assert before.start_time < before.end_time <= after.start_time
    assert steps[-1].end_time <= run.end_time
    assert by_name["render"].total_run_time.total_seconds() > 0
    # the flow's data flow, as Prefect's engine records it: the graph in the UI links the steps
    assert by_name["render"].task_inputs["lease"][0].id == by_name["acquire_slot"].id
    assert by_name["store"].task_inputs["rendered"][0].id == by_name["render"].id
    assert {t.task_key for t in tasks} == {validate.task_key, acquire_slot.task_key, render.task_key, store.task_key}


async def test_ui_retry_runs_the_next_attempt_and_succeeds(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    fake.faults.fail_node_types = {"KSampler"}  # a runtime error: permanent, the job fails at once
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    async with prefect_worker(rt, server_redis_url, prefect_api_url):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
        failed = await with_flow_run(rt, await wait_done(rt, job.job_id))
        assert failed.status == JobState.FAILED and failed.attempt == 1
        assert failed.error is not None and failed.error.code == "EXECUTION_ERROR"
        run_id = failed.flow_run_id
        assert run_id is not None
        await _wait_state(run_id, "Failed")
        fake.faults.fail_node_types = set()
        async with get_client() as client:  # what the UI's Retry button sends
            await client.set_flow_run_state(UUID(run_id), AwaitingRetry(message="Retry from the UI"), force=True)
        for _ in range(150):
            cur = await rt.store.get(job.job_id)
            if cur is not None and cur.attempt == 2 and cur.status.terminal:
                break
            await asyncio.sleep(0.1)
    assert cur is not None and cur.status == JobState.SUCCEEDED and cur.attempt == 2, cur
    assert cur.flow_run_id == run_id, "the retried flow run itself ran the next attempt"
    await _wait_state(run_id, "Completed")


async def test_ui_cancel_interrupts_the_running_job(prefect_api_url, fake, runtime_factory, server_redis_url) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 8.0
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    async with prefect_worker(rt, server_redis_url, prefect_api_url):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="slow", steps=8))).job
        for _ in range(200):
            cur = await rt.store.get(job.job_id)
            if cur is not None and cur.flow_run_id and cur.progress.phase == "rendering":
                break
            await asyncio.sleep(0.05)
        assert cur is not None and cur.flow_run_id
        async with get_client() as client:
            await client.set_flow_run_state(UUID(cur.flow_run_id), Cancelling(), force=True)
        done = await wait_done(rt, job.job_id, timeout=15)
    assert done.status == JobState.CANCELED
    assert fake.interrupts
    await _wait_state(cur.flow_run_id, "Cancelled")


async def test_the_generate_flow_still_runs_on_prefects_own_engine(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    """comfyflow's executor writes the records beside the attempt, but ``generate`` stays a real Prefect flow:
    run by Prefect's engine on a claimed attempt it renders and stores the job, as its four task runs."""
    from prefect.flow_engine import run_flow_async

    from comfyflow.core.attempt import AttemptContext
    from comfyflow.core.queue import QueueReader
    from flows.generate import ACTIVE, generate

    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    job = (await rt.store.submit(Txt2ImgRequest(prompt="engine", steps=2))).job
    msg = await QueueReader(rt.redis, rt.store.keys, "engine", rt.settings.priority_weights).next(block_ms=2000)
    assert msg is not None
    claim = await rt.store.claim(msg, "engine")
    assert claim is not None and claim.job_id == job.job_id
    ctx = AttemptContext(rt, claim, await rt.store.get(job.job_id), await rt.store.raw(job.job_id))  # type: ignore[arg-type]
    ACTIVE[(job.job_id, claim.attempt)] = ctx
    try:
        state = await run_flow_async(generate, parameters={"job_id": job.job_id, "attempt": claim.attempt},
                                     return_type="state")  # fmt: skip
    finally:
        ACTIVE.pop((job.job_id, claim.attempt), None)
    assert state.is_completed(), state
    assert ctx.result is not None and ctx.result.artifacts
    assert await rt.store.complete(claim, ctx.result)
    flow_run_id = state.state_details.flow_run_id
    names = sorted(t.name.rsplit("-", 1)[0] for t in await task_runs(flow_run_id, 4))
    assert names == ["acquire_slot", "render", "store", "validate"]
