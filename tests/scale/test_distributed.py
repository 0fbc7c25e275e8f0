"""The distributed configuration: an API process (``comfyflow serve --workers 0``) and two ``comfyflow worker``
processes sharing the Redis server, a Prefect server on PostgreSQL and S3 (moto), rendering on three backends."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from comfyflow.testing.api_server import free_port
from comfyflow.testing.moto_server import MotoS3Server, moto_s3_server
from tests.scale.conftest import FAST, MODELS, Processes, worker_env
from tests.waiting import until

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


@pytest.fixture(scope="module")
def prefect_url() -> Iterator[str]:
    from comfyflow.testing.prefect_server import prefect_server

    with prefect_server(services=False) as url:
        yield url


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3Server]:
    with moto_s3_server("scale") as server:
        yield server


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as r:
        return r.status, await r.json(content_type=None)


async def test_api_and_two_workers_on_redis_prefect_postgres_and_s3(  # type: ignore[no-untyped-def]
    fakes, make_settings, redis_url, processes: Processes, prefect_url: str, s3: MotoS3Server, prefix: str
) -> None:
    ep = s3.endpoint
    options = ep.storage_options()
    settings = make_settings(
        backends=[f.url for f in fakes.values()], redis_url=redis_url, storage_url=f"s3://{ep.bucket}/{prefix}",
        storage_options=options, **FAST,
    )  # fmt: skip
    env = worker_env(
        settings,
        COMFYFLOW_PREFECT_ENABLED="true",
        COMFYFLOW_PREFECT_API_URL=prefect_url,
        COMFYFLOW_STORAGE_OPTIONS=json.dumps(options),
        COMFYFLOW_STORAGE_PUBLIC_ENDPOINT=ep.endpoint_url,
        COMFYFLOW_LOG_LEVEL="INFO",
    )
    port = free_port()
    processes.start("api", ["serve", "--workers", "0", "--port", str(port)], env)
    for i in range(2):
        processes.start(f"worker{i}", ["worker", "--concurrency", "4"], env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def api_up() -> bool:
                try:
                    return (await _json(http, "GET", f"{base}/healthz"))[0] == 200
                except aiohttp.ClientError:
                    return False

            await until(api_up, timeout=60, what="the API process answers")
            await until(
                lambda: all("worker started" in processes.log(f"worker{i}", tail=None) for i in range(2)),
                timeout=60, what="both worker processes are consuming",
            )  # fmt: skip
            ids = []
            for i in range(12):
                body = {"prompt": f"fox {i}", "width": 64, "height": 64, "steps": 2, "model": MODELS[i % 3]}
                status, job = await _json(http, "POST", f"{base}/api/v1/jobs", json=body)
                assert status == 202, job
                ids.append(job["job_id"])

            done: dict[str, Any] = {}

            async def all_done() -> bool:
                for job_id in ids:
                    if job_id not in done:
                        _, job = await _json(http, "GET", f"{base}/api/v1/jobs/{job_id}")
                        # the flow run id is noted when Prefect answers, which may be after the job ended
                        if job["status"] in ("succeeded", "failed", "canceled") and job["flow_run_id"]:
                            done[job_id] = job
                return len(done) == len(ids)

            await until(all_done, timeout=150, what="every job finished, its Prefect flow run named")
            by_url = {f.url: f for f in fakes.values()}
            for job in done.values():
                assert job["status"] == "succeeded", job["error"]
                assert job["request"]["model"] in by_url[job["result"]["backend"]].checkpoints
                for art in job["result"]["artifacts"]:
                    assert art["url"].startswith(ep.endpoint_url), "a presigned S3 URL, not a link through the API"
                    async with http.get(art["url"]) as r:
                        assert r.status == 200
                        data = await r.read()
                    assert hashlib.sha256(data).hexdigest() == art["sha256"] and data[:8] == b"\x89PNG\r\n\x1a\n"

            run = done[ids[0]]["flow_run_id"]

            async def run_completed() -> bool:  # its final state is written beside the job, not before it ends
                status, flow_run = await _json(http, "GET", f"{prefect_url}/flow_runs/{run}")
                assert status == 200, flow_run
                return bool(flow_run["state"]["type"] == "COMPLETED")

            await until(run_completed, timeout=60, what="the flow run is Completed in Prefect")
            status, listing = await _json(http, "GET", f"{base}/api/v1/backends")
            assert status == 200 and {b["url"] for b in listing["backends"]} == set(by_url)
            assert all(b["health"] == "up" for b in listing["backends"]), listing
    except BaseException:
        print(processes.logs())
        raise
    ran = {name: processes.log(name, tail=None).count("job succeeded") for name in ("worker0", "worker1")}
    assert sum(ran.values()) == len(ids) and all(ran.values()), f"both worker processes ran jobs: {ran}"
