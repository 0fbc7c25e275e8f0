"""Operations: /health (every dependency), /healthz (liveness), /readyz (readiness), /ping."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow import __version__
from comfyflow.core.queue import missing_groups, queue_depth

bp = Blueprint("ops")


async def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), timeout=3.0)
        ok, info = detail if isinstance(detail, tuple) else (True, detail)
    except Exception as exc:
        ok, info = False, f"{type(exc).__name__}: {exc}"
    return {"status": "ok" if ok else "down", "latency_s": round(time.perf_counter() - started, 4), "detail": info}


async def check_all(request: Request) -> dict[str, Any]:
    app = request.app
    rt = app.ctx.rt
    settings = app.ctx.settings

    async def redis() -> Any:
        return bool(await rt.redis.ping()), ""

    async def storage() -> Any:
        await rt.storage.list("health/")
        return True, rt.storage.url

    async def prefect() -> Any:
        url = app.ctx.prefect_api_url
        if not url:
            return True, "disabled"
        async with aiohttp.ClientSession() as s, s.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200, url

    async def workers() -> Any:
        beats = await rt.redis.hgetall(rt.store.keys.workers)
        fresh = max(10.0, settings.heartbeat_seconds * 5)
        now = time.time()
        alive = [k.decode() for k, v in beats.items() if now - float(v) < fresh]
        return bool(alive), {"alive": len(alive)}

    names = ["redis", "storage", "prefect", "workers"]
    checks = [redis, storage, prefect, workers]
    results = await asyncio.gather(*[_timed(c) for c in checks])
    out = dict(zip(names, results, strict=True))
    backends = {}
    for url, backend in rt.backends.items():
        h = await backend.health()
        backends[url] = {"status": "ok" if h.ok else "down", "latency_s": round(h.latency_s, 4),
                         "queue_remaining": h.queue_remaining, "detail": h.detail}  # fmt: skip
    out["backends"] = backends
    return out


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    """Every dependency with its status and latency. 200 only when all are healthy."""
    deps = await check_all(request)
    essential_down = deps["redis"]["status"] != "ok" or deps["storage"]["status"] != "ok"
    backends_up = [b for b in deps["backends"].values() if b["status"] == "ok"]
    degraded = (
        len(backends_up) < len(deps["backends"])
        or deps["prefect"]["status"] != "ok"
        or deps["workers"]["status"] != "ok"
    )
    # with every backend down jobs are still accepted and kept queued: degraded, not unhealthy
    status = "unhealthy" if essential_down else "degraded" if degraded else "healthy"
    body = {"status": status, "version": __version__, "dependencies": deps}
    return json(body, status=200 if status == "healthy" else 503)


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    """Liveness: the process answers."""
    return json({"status": "alive"})


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    """Readiness: Redis and storage answer and the queue is under its admission limit."""
    rt = request.app.ctx.rt
    reasons: list[str] = []
    degraded: list[str] = []
    try:
        await asyncio.wait_for(rt.redis.ping(), timeout=2)
        if missing := await missing_groups(rt.redis, rt.store.keys):
            degraded.append(
                f"queue consumer group missing on {', '.join(missing)} (Redis lost its data); "
                "workers recreate it within seconds"
            )
        depth = sum((await queue_depth(rt.redis, rt.store.keys)).values())
        depth -= int(await rt.redis.get(rt.store.keys.batch_backlog) or 0)  # batches have their own limit
        if depth >= request.app.ctx.settings.max_queue_depth:
            reasons.append(f"queue depth {depth} at its limit {request.app.ctx.settings.max_queue_depth}")
    except Exception as exc:
        reasons.append(f"redis: {type(exc).__name__}: {exc}")
    try:
        await asyncio.wait_for(rt.storage.list("health/"), timeout=3)
    except Exception as exc:
        reasons.append(f"storage: {type(exc).__name__}: {exc}")
    if reasons or degraded:
        status = "not_ready" if reasons else "degraded"
        return json({"status": status, "reasons": reasons + degraded}, status=503, headers={"Retry-After": "5"})
    return json({"status": "ready"})


@bp.get("/ping")
async def ping(request: Request) -> HTTPResponse:
    return json({"ok": True})
