"""Operations endpoints over a real server: /health, /healthz, /readyz (admission control), /ping, OpenAPI, docs."""

from __future__ import annotations

import asyncio
import re

from tests.api.helpers import error_of, submit, tiny


async def test_health_is_200_only_when_every_dependency_is_up(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()

    async def health() -> tuple[int, dict]:
        async with http.get(f"{base}/health") as r:
            assert r.headers["X-Request-ID"] and r.headers["X-API-Version"] == "v1"
            return r.status, await r.json()

    # the workers announce themselves with their first heartbeat
    status, body = await health()
    for _ in range(100):
        if status == 200:
            break
        await asyncio.sleep(0.05)
        status, body = await health()
    assert status == 200 and body["status"] == "healthy", body
    deps = body["dependencies"]
    assert {"redis", "storage", "prefect", "workers", "backends"} <= set(deps)
    for name in ("redis", "storage", "workers"):
        assert deps[name]["status"] == "ok" and deps[name]["latency_s"] >= 0
    assert deps["backends"][fake.url]["status"] == "ok"
    assert body["version"]

    await fake.stop()
    status, body = await health()
    assert status == 503 and body["status"] == "degraded", body
    assert body["dependencies"]["backends"][fake.url]["status"] == "down"
    assert body["dependencies"]["redis"]["status"] == "ok"
    # submissions are still accepted and wait in the queue
    await submit(http, base)


async def test_liveness_ping_openapi_and_docs(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    async with http.get(f"{base}/healthz") as r:
        assert r.status == 200 and (await r.json()) == {"status": "alive"} and r.headers["X-Request-ID"]
    async with http.get(f"{base}/ping") as r:
        assert r.status == 200 and (await r.json()) == {"ok": True}
    async with http.get(f"{base}/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    jobs = ["/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/retry", "/api/v1/jobs/{job_id}/events"]
    others = ["/api/v1/generate", "/api/v1/uploads", "/api/v1/models", "/health", "/healthz", "/readyz", "/ping"]
    assert set(jobs + others) <= set(doc["paths"])
    assert {"JobRequest", "Job", "Error"} <= set(doc["components"]["schemas"])
    async with http.get(f"{base}/docs") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        page = await r.text()
    assert "/openapi.json" in page


async def test_the_docs_page_loads_nothing_from_another_host(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    async with http.get(f"{base}/docs") as r:
        page = await r.text()
    assert "://" not in page, "no absolute URL: works offline (no CDN)"
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts and all(s.startswith("/") for s in sources)
    for path in scripts:
        async with http.get(f"{base}{path}") as r:
            assert r.status == 200 and "javascript" in r.headers["Content-Type"]
            body = await r.read()
        assert len(body) > 500_000 and b"Redoc" in body  # the ReDoc bundle shipped in the package


async def test_admission_control_refuses_over_queue_depth(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, max_queue_depth=2)
    async with http.get(f"{base}/readyz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ready"
    await submit(http, base)
    await submit(http, base)
    async with http.post(f"{base}/api/v1/jobs", json=tiny()) as r:
        err = await error_of(r, 503, "BACKEND_UNAVAILABLE")
        assert int(r.headers["Retry-After"]) >= 1
        assert err["details"] == {"queue_depth": 2, "limit": 2}
    async with http.post(f"{base}/api/v1/generate", json=tiny()) as r:
        await error_of(r, 503, "BACKEND_UNAVAILABLE")
        assert r.headers["Retry-After"]
    async with http.get(f"{base}/readyz") as r:
        assert r.status == 503 and r.headers["Retry-After"]
        body = await r.json()
        assert body["status"] == "not_ready" and "queue depth 2" in body["reasons"][0]
    async with http.get(f"{base}/healthz") as r:
        assert r.status == 200, "liveness does not depend on the queue"
    # a refused submission used no Idempotency-Key: the same key works once there is room
    async with http.post(f"{base}/api/v1/jobs", json=tiny(), headers={"Idempotency-Key": "later"}) as r:
        await error_of(r, 503, "BACKEND_UNAVAILABLE")
    async with http.get(f"{base}/api/v1/jobs") as r:
        oldest = (await r.json())["items"][-1]
    async with http.delete(f"{base}/api/v1/jobs/{oldest['job_id']}") as r:
        assert r.status == 200
    async with http.post(f"{base}/api/v1/jobs", json=tiny(), headers={"Idempotency-Key": "later"}) as r:
        assert r.status == 202, await r.text()
