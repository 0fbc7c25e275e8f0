"""The API request that submitted a job is findable in Prefect: the flow run is tagged with it, and the run
logger names it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest

from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import wait_done
from tests.flows.test_generate_flow import _wait_state, prefect_worker

pytestmark = pytest.mark.prefect


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def run_logs() -> Iterator[_Records]:
    """Records of Prefect's flow-run logger (set up by Prefect once a worker runs; the tests run it at WARNING)."""
    records = _Records()
    logger = logging.getLogger("prefect.flow_runs")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


async def test_request_id_tags_the_flow_run_and_its_log(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    async with prefect_worker(rt, server_redis_url, prefect_api_url):
        with run_logs() as records:
            req = Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2)
            job = (await rt.store.submit(req, extra={"request_id": "req-prefect-7"})).job
            assert job is not None
            done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED and done.flow_run_id
    run = await _wait_state(done.flow_run_id, "Completed")
    assert "request:req-prefect-7" in run.tags
    started = f"job {job.job_id} attempt 1 (request req-prefect-7)"
    assert any(started in msg for msg in records.messages), records.messages
