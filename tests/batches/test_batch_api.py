"""Batches over the live API, end to end: a 1,000-item sweep on worker processes, one of them SIGKILLed and the
API restarted on the same port mid-batch; cancel and retry; caller isolation; the daily quota."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyflow.api.app import create_app
from comfyflow.core.attempt import prompt_id_for
from comfyflow.models import Principal, Role
from comfyflow.testing.api_server import free_port, serve_app
from tests.conftest import stored_files


def worker_process(settings: Any, home: Path, *, concurrency: int = 4) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "COMFYFLOW_HOME": str(home),
        "COMFYFLOW_REDIS_URL": settings.redis_url.get_secret_value(),
        "COMFYFLOW_KEY_PREFIX": settings.key_prefix,
        "COMFYFLOW_BACKENDS": ",".join(settings.backends),
        "COMFYFLOW_BACKEND_SLOTS": str(settings.backend_slots),
        "COMFYFLOW_PREFECT_ENABLED": "false",
        "COMFYFLOW_LEASE_SECONDS": str(settings.lease_seconds),
        "COMFYFLOW_STORAGE_URL": settings.resolved_storage_url,
        "COMFYFLOW_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "comfyflow.cli", "worker", "--concurrency", str(concurrency)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(home / "worker.log", "ab"),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def api(settings: Any, port: int, **kwargs: Any) -> AsyncIterator[str]:
    async with serve_app(create_app(settings, **kwargs), port=port) as base:
        yield base


async def get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def all_items(http: aiohttp.ClientSession, base: str, batch_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = f"?limit=500&cursor={cursor}" if cursor else "?limit=500"
        page = await get_json(http, f"{base}/api/v1/batches/{batch_id}{query}")
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


@pytest.mark.slow
async def test_thousand_item_sweep_survives_worker_sigkill_and_api_restart(
    fake, make_settings, server_redis_url, tmp_path, http
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(backends=[fake.url], redis_url=server_redis_url, auth="none", lease_seconds=1.0,
                             backend_slots=4)  # fmt: skip
    port = free_port()
    procs = [worker_process(settings, tmp_path / f"w{i}") for i in range(2)]
    try:
        body = {"name": "sweep", "base": {"prompt": "fox", "width": 64, "height": 64, "steps": 1},
                "sweep": {"seed": list(range(250)), "prompt": ["a fox", "a cat"], "cfg_scale": [5, 7]},
                "priority": "low"}  # fmt: skip
        async with api(settings, port) as base:
            async with http.post(f"{base}/api/v1/batches", json=body) as r:
                assert r.status == 202, await r.text()
                batch = await r.json()
            batch_id = batch["batch_id"]
            assert batch["total"] == 1000 and batch["counts"]["queued"] == 1000
            assert r.headers["Location"] == f"/api/v1/batches/{batch_id}"
            for _ in range(600):  # let a few hundred items finish, then kill a worker mid-render
                batch = await get_json(http, f"{base}/api/v1/batches/{batch_id}?limit=0")
                if batch["counts"]["succeeded"] >= 200:
                    break
                await asyncio.sleep(0.05)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            before_restart = batch
        # the API is down for a moment, and comes back on the same port: the client notices nothing. (A new
        # session: serve_app's shutdown leaves the old server's keep-alive connections open, which a process
        # restart would not.)
        await http.close()
        http = aiohttp.ClientSession()
        async with http, api(settings, port) as base:
            again = await get_json(http, f"{base}/api/v1/batches/{batch_id}?limit=0")
            assert again["total"] == 1000 and again["batch_id"] == batch_id
            assert again["counts"]["succeeded"] >= before_restart["counts"]["succeeded"]
            for _ in range(1800):
                batch = await get_json(http, f"{base}/api/v1/batches/{batch_id}?limit=0")
                if batch["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.1)
            assert batch["status"] == "succeeded", (batch, (tmp_path / "w1" / "worker.log").read_text()[-3000:])
            assert batch["counts"]["succeeded"] == 1000 and batch["progress"] == 1.0
            items = await all_items(http, base, batch_id)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
    assert [i["index"] for i in items] == list(range(1000))
    ids = [i["job_id"] for i in items]
    assert len(set(ids)) == 1000
    assert all(i["status"] == "succeeded" and len(i["result"]["artifacts"]) == 1 for i in items)
    # exactly one artifact set per item, and no item rendered twice (a killed worker's items are adopted)
    root = Path(settings.resolved_storage_url.removeprefix("file://")) / "jobs"
    assert sorted(p.name for p in root.iterdir()) == sorted(ids)
    assert all(stored_files(root / i) == ["0.png", "metadata.json"] for i in ids)
    posted = fake.prompts_posted
    renders = {i["job_id"]: sum(posted.get(prompt_id_for(i["job_id"], a), 0) for a in range(1, i["attempt"] + 1))
               for i in items}  # fmt: skip
    assert set(renders.values()) == {1}, {k: v for k, v in renders.items() if v != 1}
    assert sum(posted.values()) == 1000
    assert any(i["attempt"] > 1 for i in items), "the SIGKILL caught items mid-flight; they ran as attempt 2"
    seeds = {(i["result"]["seed"]) for i in items}
    assert seeds == set(range(250))


class HeaderPolicy:
    """Callers named by an X-User header (FREE role, daily quota 5), to test isolation and quota."""

    async def authenticate(self, request: Any) -> Principal:
        return Principal(id=request.headers.get("x-user", "anon"), role=Role.FREE)

    async def check_request(self, principal: Principal, request: Any) -> None:
        return None

    async def daily_limit(self, principal: Principal) -> tuple[int | None, str]:
        return 5, "20250101"

    def job_fields(self, principal: Principal) -> dict[str, Any]:
        return {"role": principal.role.value}

    async def check_batch(self, principal: Principal, size: int) -> None:
        return None


async def test_batches_are_the_callers_own_and_count_against_the_daily_quota(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, policy=HeaderPolicy())
    alice, bob = {"X-User": "alice"}, {"X-User": "bob"}
    body = {"base": {"prompt": "fox", "steps": 1}, "sweep": {"seed": [1, 2, 3]}}
    async with http.post(f"{base}/api/v1/batches", json=body, headers=alice) as r:
        assert r.status == 202, await r.text()
        batch = await r.json()
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/retry")):
        async with http.request(method, f"{base}/api/v1/batches/{batch['batch_id']}{path}", headers=bob) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "NOT_FOUND"
    async with http.get(f"{base}/api/v1/batches", headers=bob) as r:
        assert (await r.json())["items"] == []
    async with http.get(f"{base}/api/v1/batches", headers=alice) as r:
        assert [b["batch_id"] for b in (await r.json())["items"]] == [batch["batch_id"]]
    async with http.post(f"{base}/api/v1/batches", json=body, headers=alice) as r:  # 3 + 3 > 5
        err = await r.json()
        assert r.status == 402 and err["error"]["code"] == "QUOTA_EXCEEDED", err
        assert err["error"]["details"] == {"limit": 5, "used": 3, "items": 3}
    async with http.post(f"{base}/api/v1/jobs", json={"prompt": "one more"}, headers=alice) as r:
        assert r.status == 202  # the 4th and 5th jobs of the day are still there
    async with http.post(f"{base}/api/v1/jobs", json={"prompt": "last"}, headers=alice) as r:
        assert r.status == 202
    async with http.post(f"{base}/api/v1/jobs", json={"prompt": "too many"}, headers=alice) as r:
        assert r.status == 402


async def test_invalid_batches_are_refused_with_the_item_named(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, max_batch_items=50)
    cases = [
        ({"items": [{"prompt": "ok"}, {"prompt": "bad", "steps": 0}]}, "items.1.steps"),
        ({"base": {"prompt": "x"}, "sweep": {"seed": list(range(51))}}, "sweep"),
        ({"base": {"prompt": "x"}, "sweep": {"cfg_scale": [7, 99]}}, "sweep[1].cfg_scale"),
        ({"items": [{"prompt": "x"}], "sweep": {"seed": [1]}}, None),
    ]
    for body, field in cases:
        async with http.post(f"{base}/api/v1/batches", json=body) as r:
            err = (await r.json())["error"]
            assert r.status == 422 and err["code"] == "VALIDATION_ERROR", err
            if field:
                assert err["details"][0]["field"] == field, err


async def test_cancel_the_rest_then_retry_over_the_api(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 0.3
    base = await api_factory(worker_concurrency=1)
    body = {"base": {"prompt": "fox", "steps": 2}, "sweep": {"seed": list(range(20))}}
    async with http.post(f"{base}/api/v1/batches", json=body) as r:
        batch = await r.json()
    url = f"{base}/api/v1/batches/{batch['batch_id']}"
    for _ in range(200):
        batch = await get_json(http, url + "?limit=0")
        if batch["counts"]["succeeded"] >= 1:
            break
        await asyncio.sleep(0.05)
    async with http.delete(url) as r:
        canceled = await r.json()
        assert r.status in (200, 202) and canceled["canceled"].get("canceled", 0) >= 15, canceled
    for _ in range(200):
        batch = await get_json(http, url + "?limit=0")
        if batch["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert batch["status"] == "canceled" and batch["cancel_requested"], batch
    assert batch["counts"]["succeeded"] + batch["counts"]["canceled"] == 20
    async with http.post(url + "/retry") as r:
        assert r.status == 409  # nothing failed
    fake.render_time = 0.0
    # Let the interrupted prompt end on ComfyUI first: a retry that finds it still running adopts it, and then
    # fails with it (a core engine issue, not a batch one: a single job retried right after its cancel does too).
    await asyncio.sleep(1.0)
    async with http.post(url + "/retry?canceled=true") as r:
        retried = await r.json()
        assert r.status == 202 and retried["retried"] == batch["counts"]["canceled"], retried
    for _ in range(400):
        batch = await get_json(http, url + "?limit=0")
        if batch["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert batch["status"] == "succeeded" and batch["counts"]["succeeded"] == 20, batch
    page = await get_json(http, url + "?status=succeeded&limit=7")
    assert len(page["items"]) == 7 and page["next_cursor"]
    job = await get_json(http, f"{base}{page['items'][0]['links']['self']}")
    assert job["batch_id"] == batch["batch_id"] and f"batch:{batch['batch_id']}" in job["labels"]


async def test_retry_reruns_only_the_failed_items(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    fake.faults.fail_node_types = {"KSampler"}
    body = {"items": [{"prompt": f"item {i}", "steps": 1} for i in range(6)], "name": "flaky"}
    async with http.post(f"{base}/api/v1/batches", json=body) as r:
        url = f"{base}/api/v1/batches/{(await r.json())['batch_id']}"
    for _ in range(400):
        batch = await get_json(http, url + "?limit=0")
        if batch["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert batch["status"] == "failed" and batch["counts"]["failed"] == 6, batch
    assert batch["finished_at"] is not None
    failed = await get_json(http, url + "?status=failed")
    assert len(failed["items"]) == 6 and failed["items"][0]["error"]["code"] == "EXECUTION_ERROR"
    fake.faults.fail_node_types = set()
    async with http.post(url + "/retry") as r:
        assert r.status == 202 and (await r.json())["retried"] == 6
    for _ in range(400):
        batch = await get_json(http, url + "?limit=0")
        if batch["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert batch["status"] == "succeeded" and batch["counts"] == {**batch["counts"], "succeeded": 6, "failed": 0}
    items = (await get_json(http, url))["items"]
    assert all(i["attempt"] == 2 and i["result"]["artifacts"] for i in items)
