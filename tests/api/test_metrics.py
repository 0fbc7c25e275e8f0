"""/metrics over a real API: every metric is recorded, with the right values, across several processes."""

from __future__ import annotations

import asyncio
from typing import Any

from comfyflow import metrics as m
from comfyflow.core.runtime import Runtime
from comfyflow.testing.metrics import Samples, scrape
from tests.api.helpers import submit, tiny, wait_for
from tests.core.conftest import running_worker

JOB_ROUTE = "/api/v1/jobs/<job_id:str>"


async def _until(http: Any, base: str, check: Any, timeout: float = 10.0) -> Samples:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await scrape(http, base)
        if check(samples):
            return samples
        assert asyncio.get_running_loop().time() < deadline, "metrics never showed the expected values"
        await asyncio.sleep(0.1)


async def _stored_bytes(http: Any, job: dict[str, Any]) -> int:
    async with http.get(job["result"]["metadata_url"]) as r:
        meta = await r.read()
    return sum(a["size"] for a in job["result"]["artifacts"]) + len(meta)


async def test_jobs_phases_backends_storage_and_requests(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 0.05
    base = await api_factory(metrics_flush_seconds=0.1)
    fake.faults.fail_node_types = {"KSampler"}  # a runtime error on the backend: a system failure
    broken = await wait_for(http, base, (await submit(http, base))["job_id"])
    fake.faults.fail_node_types = set()
    assert broken["status"] == "failed" and broken["error"]["code"] == "EXECUTION_ERROR"
    user = await wait_for(http, base, (await submit(http, base, tiny(model="nope.safetensors")))["job_id"])
    assert user["status"] == "failed" and user["error"]["code"] == "INVALID_GRAPH"
    small = [await submit(http, base, tiny(priority=p)) for p in ("high", "low")]
    big = await submit(http, base, tiny(width=1536, height=1536, steps=1))
    done = [await wait_for(http, base, j["job_id"]) for j in [*small, big]]
    assert [j["status"] for j in done] == ["succeeded"] * 3
    async with http.get(f"{base}/api/v1/jobs/{'0' * 32}") as r:
        assert r.status == 404
    async with http.get(f"{base}/api/v1/nothing-here") as r:
        assert r.status == 404

    s = await _until(http, base, lambda s: s.total("comfyflow_job_first_progress_seconds_count") >= 4)
    assert s.total("comfyflow_jobs_submitted_total") == 5
    assert s.get1("comfyflow_jobs_submitted_total", role="internal", priority="normal") == 3
    assert s.get1("comfyflow_jobs_submitted_total", role="internal", priority="high") == 1
    fin = "comfyflow_jobs_finished_total"
    assert s.get1(fin, state="succeeded", role="internal", error_class="none") == 3
    assert s.get1(fin, state="failed", role="internal", error_class="EXECUTION_ERROR") == 1
    assert s.get1(fin, state="failed", role="internal", error_class="INVALID_GRAPH") == 1
    assert s.total(fin) == 5
    assert s.get1(fin, state="failed", role="free", error_class="STALLED") == 0  # known series exist at 0
    # durations of succeeded jobs, by phase and SLO size class
    hist = "comfyflow_job_duration_seconds"
    assert s.get1(f"{hist}_count", phase="total", size="le_2mp") == 2
    assert s.get1(f"{hist}_count", phase="total", size="gt_2mp") == 1
    for phase in m.PHASES:
        assert s.total(f"{hist}_count", phase=phase) == 3
    assert s.get1(f"{hist}_bucket", phase="total", size="le_2mp", le="+Inf") == 2
    assert s.get1(f"{hist}_bucket", phase="total", size="le_2mp", le="20.0") == 2  # fast renders
    assert abs(s.total(f"{hist}_sum", phase="total") - sum(j["durations"]["total"] for j in done)) < 0.01
    assert abs(s.total(f"{hist}_sum", phase="render") - sum(j["durations"]["render"] for j in done)) < 0.01
    # first progress: every attempt that reached the backend (3 succeeded + the runtime error)
    fp = s.total("comfyflow_job_first_progress_seconds_count")
    assert fp == 4 and 0 < s.total("comfyflow_job_first_progress_seconds_sum") < 4 * 2.0
    # backends
    assert s.get1("comfyflow_backend_up", backend=fake.url) == 1
    # its 2 slots, or more while its renders are fast (the fake's are: up to the max of 6)
    assert 2 <= s.get1("comfyflow_backend_capacity_slots", backend=fake.url) <= 6
    assert s.get1("comfyflow_backend_slots_in_use", backend=fake.url) == 0
    assert s.get1("comfyflow_backend_busy_seconds_total", backend=fake.url) > 0
    assert s.get1("comfyflow_backend_failures_total", backend=fake.url, error_class="EXECUTION_ERROR") == 1
    assert s.total("comfyflow_backend_failures_total", error_class="INVALID_GRAPH") == 1
    # queue and workers
    assert all(s.get1("comfyflow_queue_depth", priority=p) == 0 for p in m.PRIORITIES)
    assert s.get1("comfyflow_jobs_in_progress") == 0 and s.get1("comfyflow_queue_delayed_jobs") == 0
    assert s.get1("comfyflow_workers_alive") == 1
    # storage: every artifact byte and metadata.json of the three succeeded jobs
    assert s.get1("comfyflow_storage_written_bytes_total") == sum([await _stored_bytes(http, j) for j in done])
    assert s.get1("comfyflow_storage_errors_total") == 0
    # HTTP by route pattern (never the concrete path), method and status
    req = "comfyflow_http_requests_total"
    assert s.get1(req, route="/api/v1/jobs", method="POST", status="202") == 5
    assert s.get1(req, route=JOB_ROUTE, method="GET", status="404") == 1
    assert s.get1(req, route="unmatched", method="GET", status="404") == 1
    assert s.total(req, route=JOB_ROUTE, method="GET", status="200") >= 5
    assert not [lab for (n, lab) in s if n == req and any(v.endswith("0" * 32) for _, v in lab)]
    assert s.get1("comfyflow_http_request_duration_seconds_count", route="/api/v1/jobs", method="POST") == 5
    assert s.names() >= {spec.name.removesuffix("_total") + "_total" for spec in m.ALL if spec.kind == "counter"}


async def test_queue_depth_and_in_progress_are_live(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    for prio in ("high", "low", "low"):
        await submit(http, base, tiny(priority=prio))
    s = await scrape(http, base)
    assert [s.get1("comfyflow_queue_depth", priority=p) for p in m.PRIORITIES] == [1, 0, 2]
    assert s.get1("comfyflow_jobs_in_progress") == 0 and s.get1("comfyflow_workers_alive") == 0


async def test_several_api_and_worker_processes_report_the_fleet(
    api_factory, http, fake, make_settings, server_redis_url
) -> None:  # type: ignore[no-untyped-def]
    """Two API processes without workers and one worker process (each its own runtime): any API answers with
    the fleet's totals, and scraping twice counts nothing twice."""
    fake.render_time = 0.05
    settings: dict[str, Any] = {"metrics_flush_seconds": 0.1}
    a = await api_factory(run_worker=False, **settings)
    b = await api_factory(run_worker=False, **settings)
    rt = await Runtime.open(
        make_settings(backends=[fake.url], redis_url=server_redis_url, auth="none", **settings), server_redis_url
    )
    try:
        async with running_worker(rt):
            jobs = [await submit(http, b) for _ in range(3)]
            for j in jobs:
                await wait_for(http, b, j["job_id"])
            for _ in range(4):
                async with http.get(f"{a}/api/v1/jobs") as r:
                    assert r.status == 200

            def complete(s: Samples) -> bool:
                return (
                    s.get1("comfyflow_http_requests_total", route="/api/v1/jobs", method="POST", status="202") == 3
                    and s.total("comfyflow_job_first_progress_seconds_count") == 3
                )

            first = await _until(http, a, complete)
            await asyncio.sleep(0.3)  # A's own /metrics requests reach Redis within its flush interval (0.1 s)
            second = await scrape(http, b)
    finally:
        await rt.aclose()
    for s in (first, second):
        assert s.get1("comfyflow_jobs_finished_total", state="succeeded", role="internal", error_class="none") == 3
        assert s.total("comfyflow_job_first_progress_seconds_count") == 3  # recorded by the worker process
        assert s.get1("comfyflow_backend_busy_seconds_total", backend=fake.url) > 0
        assert s.get1("comfyflow_http_requests_total", route="/api/v1/jobs", method="POST", status="202") == 3
        assert s.get1("comfyflow_http_requests_total", route="/api/v1/jobs", method="GET", status="200") == 4
    assert second.get1("comfyflow_http_requests_total", route="/metrics", method="GET", status="200") >= 1
