"""Prefect's database does not grow without bound: the flow runs of a job the retention sweeper expires are
deleted with it (every attempt's run, and with them their task runs)."""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from comfyflow.core.retention import RetentionSweeper
from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import wait_done
from tests.flows.test_generate_flow import _wait_state, prefect_worker, with_flow_run
from tests.prefect_runs import task_runs

pytestmark = pytest.mark.prefect


async def _gone(run_id: str, timeout: float = 20) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            async with get_client() as client:
                await client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_an_expired_jobs_flow_runs_are_deleted_and_others_kept(
    prefect_api_url, fake, runtime_factory, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], prefect_enabled=True)
    async with prefect_worker(rt, server_redis_url, prefect_api_url):
        old, kept = [
            await with_flow_run(
                rt, await wait_done(rt, (await rt.store.submit(Txt2ImgRequest(prompt=p, steps=2))).job.job_id)
            )
            for p in ("old", "kept")
        ]
        assert old.status == kept.status == JobState.SUCCEEDED
        await _wait_state(old.flow_run_id, "Completed")
        assert len(await task_runs(old.flow_run_id, 4)) == 4
        # the old job's retention is due: the sweeper expires it, the executor deletes its runs
        await rt.redis.zadd(rt.store.keys.retention, {old.job_id: 0})
        assert await RetentionSweeper(rt).run_once() == 1
        assert (await rt.store.get(old.job_id)).status == JobState.EXPIRED  # type: ignore[union-attr]
        assert await _gone(old.flow_run_id), "the expired job's flow run is still in Prefect"
    assert await rt.redis.llen(rt.store.keys.prefect_gc) == 0
    assert len(await task_runs(old.flow_run_id, 0, final=False)) == 0, "its task runs went with it"
    await _wait_state(kept.flow_run_id, "Completed")  # the other job's run is untouched
