"""The API request that submitted a job is findable in Prefect: the flow run is tagged with it, and the run
log in Prefect names it."""

from __future__ import annotations

import asyncio

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import wait_done
from tests.flows.test_generate_flow import _wait_state, prefect_worker, with_flow_run

pytestmark = pytest.mark.prefect


async def test_request_id_tags_the_flow_run_and_its_log(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: True}):
        async with prefect_worker(rt, server_redis_url, prefect_api_url):
            req = Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2)
            job = (await rt.store.submit(req, extra={"request_id": "req-prefect-7"})).job
            assert job is not None
            done = await with_flow_run(rt, await wait_done(rt, job.job_id))
    assert done.status == JobState.SUCCEEDED and done.flow_run_id
    run = await _wait_state(done.flow_run_id, "Completed")
    assert "request:req-prefect-7" in run.tags
    started = f"job {job.job_id} attempt 1 (request req-prefect-7)"
    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
    for _ in range(100):  # the log worker ships its batches every few seconds
        async with get_client() as client:
            messages = [log.message for log in await client.read_logs(log_filter=flt)]
        if any(started in m for m in messages) and any(m.endswith(f"Completed: {run.state.message}") for m in messages):
            break
        await asyncio.sleep(0.1)
    assert any(started in m for m in messages), messages
    assert any(m.endswith(f"Completed: {run.state.message}") for m in messages), messages
