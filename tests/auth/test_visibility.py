"""What each role sees: tenants get their job's state, result and a typed error with a human message; backend
URLs, prompt ids, flow-run ids and ComfyUI's error text only reach INTERNAL callers. /metrics is for INTERNAL keys
or the metrics token; /api/v1/models names no host."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from comfyflow.models import Role
from comfyflow.testing.webhook_receiver import WebhookReceiver
from tests.api.test_webhooks import new_secret
from tests.auth.conftest import TINY, auth

FAST = {"free": {"requests_per_minute": 10_000, "daily_jobs": 1000}, "pro": {"requests_per_minute": 10_000}}


async def _finished(http: aiohttp.ClientSession, api: Any, key: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(api.url("/api/v1/jobs"), json=body, headers=auth(key)) as r:
        assert r.status == 202, await r.text()
        job = await r.json()
    deadline = asyncio.get_running_loop().time() + 30
    while job["status"] not in ("succeeded", "failed"):
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.05)
        async with http.get(api.url(f"/api/v1/jobs/{job['job_id']}"), headers=auth(key)) as r:
            assert r.status == 200
            job = await r.json()
    return dict(job)


def _host(url: str) -> str:
    return url.split("//", 1)[1]


async def test_a_tenant_sees_no_internals_of_its_failed_job_and_internal_sees_them(auth_api, http, fake) -> None:  # type: ignore[no-untyped-def]
    api = await auth_api(limits=FAST)
    free, internal = await api.key(Role.FREE), await api.key(Role.INTERNAL)
    fake.faults.fail_node_types = {"KSampler"}  # ComfyUI reports an execution error with a traceback
    tenant = await _finished(http, api, free, TINY)
    staff = await _finished(http, api, internal, TINY)
    fake.faults.fail_node_types = set()

    assert staff["status"] == tenant["status"] == "failed"
    # INTERNAL: where it ran and ComfyUI's own account
    assert staff["backend"] == fake.url and staff["error"]["code"] == "EXECUTION_ERROR"
    assert staff["error"]["details"]["traceback"] and staff["error"]["details"]["prompt_id"]
    # the tenant: the same typed error, a human message, nothing about the server
    err = tenant["error"]
    assert err["code"] == "EXECUTION_ERROR" and "KSampler" in err["message"], err
    assert set(err["details"]) <= {"node_id", "node_type", "exception_type"}, err
    for name in ("backend", "flow_run_id", "worker"):
        assert name not in tenant, name
    text = json.dumps(tenant)
    assert _host(fake.url) not in text and "traceback" not in text.lower() and "prompt_id" not in text
    assert {"job_id", "status", "progress", "attempt", "error", "created_at"} <= set(tenant)

    # a job that succeeded: artifacts and seed, no backend or prompt id
    fine = await _finished(http, api, free, TINY)
    assert fine["status"] == "succeeded" and fine["result"]["artifacts"] and fine["result"]["seed"] is not None
    assert set(fine["result"]) & {"backend", "prompt_id", "adopted"} == set()
    assert _host(fake.url) not in json.dumps(fine)
    mine = await _finished(http, api, internal, TINY)
    assert mine["result"]["backend"] == fake.url and mine["result"]["prompt_id"]
    # the list shows the same view
    async with http.get(api.url("/api/v1/jobs"), headers=auth(free)) as r:
        assert _host(fake.url) not in await r.text()


async def test_a_missing_model_tells_the_tenant_which_models_exist(auth_api, http, fake) -> None:  # type: ignore[no-untyped-def]
    api = await auth_api(limits=FAST)
    free = await api.key(Role.FREE)
    job = await _finished(http, api, free, {**TINY, "model": "not-here.safetensors"})
    err = job["error"]
    assert err["code"] == "INVALID_GRAPH" and all(c in err["message"] for c in fake.checkpoints), err
    assert _host(fake.url) not in json.dumps(job)


async def test_models_name_no_host_and_metrics_are_internal_or_token_only(auth_api, http, fake) -> None:  # type: ignore[no-untyped-def]
    api = await auth_api(run_worker=False, limits=FAST, metrics_token="scrape-token-" + "x" * 20)
    free, pro, internal = await api.key(Role.FREE), await api.key(Role.PRO), await api.key(Role.INTERNAL)
    for key in (free, internal):
        async with http.get(api.url("/api/v1/models"), headers=auth(key)) as r:
            assert r.status == 200
            body = await r.json()
        assert body["checkpoints"] == sorted(fake.checkpoints) and _host(fake.url) not in json.dumps(body)
    for key in (free, pro):
        async with http.get(api.url("/metrics"), headers=auth(key)) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "FORBIDDEN"
    async with http.get(api.url("/metrics"), headers=auth(internal)) as r:
        assert r.status == 200 and "comfyflow_jobs_submitted_total" in await r.text()
    async with http.get(api.url("/metrics"), headers=auth("scrape-token-" + "x" * 20)) as r:
        assert r.status == 200 and "comfyflow_queue_depth" in await r.text()
    # the token opens /metrics only, and a wrong token nothing
    async with http.get(api.url("/api/v1/jobs"), headers=auth("scrape-token-" + "x" * 20)) as r:
        assert r.status == 401
    async with http.get(api.url("/metrics"), headers=auth("scrape-token-" + "y" * 20)) as r:
        assert r.status == 401
    async with http.get(api.url("/metrics")) as r:
        assert r.status == 401


async def test_anonymous_probes_read_a_cached_state_that_names_no_host(auth_api, http, fake) -> None:  # type: ignore[no-untyped-def]
    api = await auth_api(run_worker=False, limits=FAST, health_refresh_seconds=30)
    free, internal = await api.key(Role.FREE), await api.key(Role.INTERNAL)
    async with http.get(api.url("/health")) as r:
        body = await r.json()
    # no worker runs here: degraded; each dependency by name, nothing else
    assert r.status == 503 and body["status"] == "degraded", body
    assert body["dependencies"] == {"redis": "up", "storage": "up", "prefect": "up", "workers": "down",
                                    "backends": "up"}  # fmt: skip
    probes = len(fake.log)
    for path in ["/health", "/readyz"] * 25:
        async with http.get(api.url(path)) as r:
            text = await r.text()
            assert r.status in (200, 503) and _host(fake.url) not in text and "Error" not in text, text
    assert len(fake.log) == probes, "an anonymous probe made the API call a backend"
    async with http.get(api.url("/health/details"), headers=auth(free)) as r:
        assert r.status == 403 and (await r.json())["error"]["code"] == "FORBIDDEN"
    async with http.get(api.url("/health/details")) as r:
        assert r.status == 401
    async with http.get(api.url("/health/details"), headers=auth(internal)) as r:
        detail = await r.json()
    assert detail["dependencies"]["backends"][fake.url]["status"] == "ok" and detail["version"]


async def test_batches_show_the_flow_run_to_internal_callers_only(auth_api, http) -> None:  # type: ignore[no-untyped-def]
    api = await auth_api(run_worker=False, limits=FAST)
    seen = {}
    for role in (Role.FREE, Role.INTERNAL):
        key = await api.key(role)
        async with http.post(api.url("/api/v1/batches"), json={"items": [TINY]}, headers=auth(key)) as r:
            assert r.status == 202, await r.text()
            batch = await r.json()
        async with http.get(api.url(f"/api/v1/batches/{batch['batch_id']}"), headers=auth(key)) as r:
            seen[role] = await r.json()
    assert "flow_run_id" not in seen[Role.FREE] and "flow_run_id" in seen[Role.INTERNAL]
    assert seen[Role.FREE]["items"][0]["status"] == "queued"


async def test_a_tenants_webhook_shows_what_its_api_view_shows(auth_api, http, fake) -> None:  # type: ignore[no-untyped-def]
    secret = new_secret()
    async with WebhookReceiver(secret) as rx:
        hooks = {"secret": secret, "allow_networks": ["127.0.0.0/8"], "backoff_seconds": 0.05, "poll_seconds": 0.05}
        api = await auth_api(limits=FAST, webhooks=hooks)
        free, internal = await api.key(Role.FREE), await api.key(Role.INTERNAL)
        fake.faults.fail_node_types = {"KSampler"}
        tenant = await _finished(http, api, free, {**TINY, "webhook": rx.url})
        staff = await _finished(http, api, internal, {**TINY, "webhook": rx.url})
        fake.faults.fail_node_types = set()
        await rx.wait(lambda r: len(r.delivered("job.failed")) == 2)
    bodies = {r.payload["data"]["job_id"]: r.payload["data"] for r in rx.delivered("job.failed")}
    mine, theirs = bodies[tenant["job_id"]], bodies[staff["job_id"]]
    assert mine["error"] == tenant["error"] and "backend" not in mine and _host(fake.url) not in json.dumps(mine)
    assert theirs["backend"] == fake.url and theirs["error"]["details"]["traceback"]
