"""The health state probes read: refreshed in the background, never by a request.

One task per API process checks every dependency (Redis, storage, Prefect, workers' heartbeats, each backend
concurrently, each bounded by a timeout) every ``COMFYFLOW_HEALTH_REFRESH_SECONDS``. Anonymous probes
(``/health``, ``/readyz``) read the last result, so a flood of them costs no Redis, storage or backend call; the
detailed result (URLs, latencies, error text) is for INTERNAL callers (``/health/details``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from comfyflow.core.queue import missing_groups, queue_depth
from comfyflow.core.runtime import Runtime

log = structlog.get_logger("comfyflow.health")
CHECK_TIMEOUT = 3.0
UP, DEGRADED, DOWN = "up", "degraded", "down"


async def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT)
        ok, info = detail if isinstance(detail, tuple) else (True, detail)
    except Exception as exc:
        ok, info = False, f"{type(exc).__name__}: {exc}"
    return {"status": "ok" if ok else "down", "latency_s": round(time.perf_counter() - started, 4), "detail": info}


async def check_all(rt: Runtime, prefect_api_url: str | None) -> dict[str, Any]:
    """Every dependency with its status, latency and detail (the INTERNAL view)."""
    settings = rt.settings

    async def redis() -> Any:
        return bool(await rt.redis.ping()), ""

    async def storage() -> Any:
        await rt.storage.list("health/")
        return True, rt.storage.url

    async def prefect() -> Any:
        if not prefect_api_url:
            return True, "disabled"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession() as s, s.get(f"{prefect_api_url}/health", timeout=timeout) as r:
            return r.status == 200, prefect_api_url

    async def workers() -> Any:
        beats = await rt.redis.hgetall(rt.store.keys.workers)
        fresh = max(10.0, settings.heartbeat_seconds * 5)
        now = time.time()
        alive = [k for k, v in beats.items() if now - float(v) < fresh]
        return bool(alive), {"alive": len(alive)}

    async def queue() -> Any:
        depth = sum((await queue_depth(rt.redis, rt.store.keys)).values())
        depth -= int(await rt.redis.get(rt.store.keys.batch_backlog) or 0)  # batches have their own limit
        return depth < settings.max_queue_depth, {"depth": depth, "limit": settings.max_queue_depth}

    async def backend(url: str) -> dict[str, Any]:
        try:
            h = await asyncio.wait_for(rt.backends[url].health(), timeout=CHECK_TIMEOUT)
        except Exception as exc:
            return {"status": "down", "latency_s": None, "queue_remaining": None, "detail": type(exc).__name__}
        return {"status": "ok" if h.ok else "down", "latency_s": round(h.latency_s, 4),
                "queue_remaining": h.queue_remaining, "detail": h.detail}  # fmt: skip

    async def groups() -> Any:  # gone when Redis restarted without persistence, until workers remake them
        missing = await missing_groups(rt.redis, rt.store.keys)
        return not missing, {"missing": missing}

    names = ["redis", "storage", "prefect", "workers", "queue", "groups"]
    urls = list(rt.backends)
    results = await asyncio.gather(
        *[_timed(c) for c in (redis, storage, prefect, workers, queue, groups)], *[backend(u) for u in urls]
    )
    out: dict[str, Any] = dict(zip(names, results[: len(names)], strict=True))
    out["backends"] = dict(zip(urls, results[len(names) :], strict=True))
    return out


def summary(deps: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(healthy / degraded / unhealthy, up / degraded / down per dependency name): all an anonymous caller sees."""
    plain = {name: UP if deps[name]["status"] == "ok" else DOWN for name in ("redis", "storage", "prefect", "workers")}
    backends = deps["backends"].values()
    up = sum(1 for b in backends if b["status"] == "ok")
    plain["backends"] = UP if up == len(backends) else DOWN if up == 0 else DEGRADED
    # with every backend down jobs are still accepted and kept queued: degraded, not unhealthy
    if plain["redis"] == DOWN or plain["storage"] == DOWN:
        return "unhealthy", plain
    return ("healthy" if all(v == UP for v in plain.values()) else "degraded"), plain


class HealthMonitor:
    """The process's last health check, refreshed by :meth:`run`."""

    def __init__(self, rt: Runtime, prefect_api_url: str | None) -> None:
        self.rt = rt
        self.prefect_api_url = prefect_api_url
        self.interval = rt.settings.health_refresh_seconds
        self.deps: dict[str, Any] | None = None
        self.checked_at = 0.0
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        self.deps = await check_all(self.rt, self.prefect_api_url)
        self.checked_at = time.time()
        self._first.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # keep the last state; it turns stale if this goes on
                log.warning("health check failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="comfyflow-health")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def current(self, wait: float = 10.0) -> dict[str, Any] | None:
        """The last result, or None when there is none yet (after ``wait`` s) or it is stale (the checks hang)."""
        if not self._first.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first.wait(), timeout=wait)
        if self.deps is None or time.time() - self.checked_at > max(3 * self.interval, 3 * CHECK_TIMEOUT + 5):
            return None
        return self.deps

    @property
    def checked_at_iso(self) -> str | None:
        return datetime.fromtimestamp(self.checked_at, UTC).isoformat() if self.checked_at else None
