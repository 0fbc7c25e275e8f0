"""CORS (COMFYFLOW_CORS_ORIGINS): a preflight from an allowed origin is answered before authentication, responses
to it carry the allow headers, other origins get none; every response keeps its request id and version headers."""

from __future__ import annotations

from typing import Any

import aiohttp

ORIGIN = "https://console.example"


async def test_cors_for_allowed_origins_only(api_factory: Any, http: aiohttp.ClientSession) -> None:
    base = await api_factory(run_worker=False, cors_origins=[ORIGIN])
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    async with http.options(f"{base}/api/v1/jobs", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Idempotency-Key" in r.headers["Access-Control-Allow-Headers"]
        assert r.headers["X-Request-ID"] and r.headers["X-API-Version"] == "v1"
    async with http.get(f"{base}/api/v1/jobs", headers={"Origin": ORIGIN, "X-Request-ID": "cors-1"}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN and r.headers["Vary"] == "Origin"
        assert "X-RateLimit-Remaining" in r.headers["Access-Control-Expose-Headers"]
        assert r.headers["X-Request-ID"] == "cors-1"
    async with http.get(f"{base}/api/v1/jobs", headers={"Origin": "https://elsewhere.example"}) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_no_cors_headers_without_configured_origins(api_factory: Any, http: aiohttp.ClientSession) -> None:
    base = await api_factory(run_worker=False)
    async with http.get(f"{base}/api/v1/jobs", headers={"Origin": ORIGIN}) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers
        assert r.headers["X-Request-ID"]
