"""Operations endpoints over a real server: /health, /healthz, /readyz (admission control), /ping, OpenAPI, docs."""

from __future__ import annotations

import asyncio
import re

from tests.api.helpers import error_of, submit, tiny


async def test_health_is_200_only_when_every_dependency_is_up(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(health_refresh_seconds=0.1)

    async def health(path: str = "/health") -> tuple[int, dict]:
        async with http.get(f"{base}{path}") as r:
            assert r.headers["X-Request-ID"] and r.headers["X-API-Version"] == "v1"
            return r.status, await r.json()

    async def until(predicate, path: str = "/health") -> tuple[int, dict]:  # type: ignore[no-untyped-def]
        deadline = asyncio.get_running_loop().time() + 20
        status, body = await health(path)
        while not predicate(status, body):
            assert asyncio.get_running_loop().time() < deadline, body
            await asyncio.sleep(0.05)
            status, body = await health(path)
        return status, body

    # the workers announce themselves with their first heartbeat; the background check sees it next round
    status, body = await until(lambda s, b: s == 200)
    assert body["status"] == "healthy" and body["checked_at"], body
    assert body["dependencies"] == {n: "up" for n in ("redis", "storage", "prefect", "workers", "backends")}
    # auth is off here (every caller is INTERNAL): the details name URLs and latencies
    status, detail = await health("/health/details")
    deps = detail["dependencies"]
    for name in ("redis", "storage", "workers"):
        assert deps[name]["status"] == "ok" and deps[name]["latency_s"] >= 0
    assert deps["backends"][fake.url]["status"] == "ok" and detail["version"]

    await fake.stop()
    status, body = await until(lambda s, b: b["dependencies"].get("backends") == "down")
    assert status == 503 and body["status"] == "degraded", body
    assert body["dependencies"]["redis"] == "up"
    _, detail = await health("/health/details")
    assert detail["dependencies"]["backends"][fake.url]["status"] == "down"
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


async def _readyz(http, base: str, status: int) -> dict:  # type: ignore[no-untyped-def]
    """Poll /readyz (a cached state, refreshed in the background) until it answers ``status``."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        async with http.get(f"{base}/readyz") as r:
            body = await r.json()
            if r.status == status:
                assert status == 200 or r.headers["Retry-After"]
                return dict(body)
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_admission_control_refuses_over_queue_depth(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, max_queue_depth=2, health_refresh_seconds=0.1)
    assert (await _readyz(http, base, 200))["status"] == "ready"
    await submit(http, base)
    await submit(http, base)
    async with http.post(f"{base}/api/v1/jobs", json=tiny()) as r:
        err = await error_of(r, 503, "BACKEND_UNAVAILABLE")
        assert int(r.headers["Retry-After"]) >= 1
        assert err["details"] == {"queue_depth": 2, "limit": 2}
    async with http.post(f"{base}/api/v1/generate", json=tiny()) as r:
        await error_of(r, 503, "BACKEND_UNAVAILABLE")
        assert r.headers["Retry-After"]
    body = await _readyz(http, base, 503)
    assert body == {
        "status": "not_ready",
        "dependencies": {"redis": "up", "storage": "up", "queue": "down", "groups": "up"},
    }
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
