"""What the worker observes per attempt, and the fleet's metrics as one scrape (``/metrics``).

The scrape flushes this process's increments, folds the job facts, reads the totals hash, and reads the live
gauges (queue depth, jobs in progress, delayed retries, workers, slots, backend health, pending webhooks) in a
few round trips, so any API process answers with the whole fleet's numbers.
"""

from __future__ import annotations

import asyncio
import time

from comfyflow import metrics as m
from comfyflow.core.attempt import AttemptContext
from comfyflow.core.keys import GROUP, PRIORITIES
from comfyflow.core.queue import queue_depth
from comfyflow.core.recorder import error_class
from comfyflow.core.runtime import Runtime
from comfyflow.core.streams import StreamLeases
from comfyflow.core.webhooks.outbox import WebhookKeys
from comfyflow.models import ErrorInfo

HEALTH_TIMEOUT = 2.5


def attempt_failed(ctx: AttemptContext, info: ErrorInfo) -> None:
    """Count a failed attempt against its backend (the one it ran on, else the one the error names)."""
    details = info.details if isinstance(info.details, dict) else {}
    backend = ctx.backend or details.get("backend") or "none"
    ctx.runtime.metrics.add(m.BACKEND_FAILURES, str(backend), error_class(info.code))


def attempt_done(ctx: AttemptContext) -> None:
    """Time to first progress event, and the backend's busy time, once the attempt is over."""
    rec = ctx.runtime.metrics
    if ctx.render_started is not None and ctx.first_progress_at is not None:
        rec.add(m.FIRST_PROGRESS, value=max(0.0, ctx.first_progress_at - ctx.render_started))
    if ctx.backend and ctx.render_started is not None:
        start = ctx.first_progress_at if ctx.first_progress_at is not None else ctx.render_started
        end = ctx.render_finished if ctx.render_finished is not None else time.monotonic()
        rec.add(m.BACKEND_BUSY, ctx.backend, value=max(0.0, end - max(start, ctx.render_started)))


async def _health(rt: Runtime) -> dict[str, tuple[float, int | None]]:
    """(up, prompts in its own queue) per backend, probed now."""

    async def one(url: str) -> tuple[float, int | None]:
        try:
            health = await asyncio.wait_for(rt.backends[url].health(), timeout=HEALTH_TIMEOUT)
            return (1.0 if health.ok else 0.0), health.queue_remaining
        except Exception:
            return 0.0, None

    urls = list(rt.backends)
    return dict(zip(urls, await asyncio.gather(*[one(u) for u in urls]), strict=True))


async def live_gauges(rt: Runtime) -> dict[m.Spec, dict[tuple[str, ...], float]]:
    keys = rt.store.keys
    pipe = rt.redis.pipeline(transaction=False)
    pipe.zcard(keys.delayed)
    for prio in PRIORITIES:
        pipe.xpending(keys.queue(prio), GROUP)
    pipe.hgetall(keys.workers)
    pipe.zcard(WebhookKeys(keys.prefix).due)
    res = await pipe.execute(raise_on_error=False)
    delayed, pendings, workers, webhooks = res[0], res[1:4], res[4], res[5]
    depth, health, streams = await asyncio.gather(
        queue_depth(rt.redis, keys), _health(rt), StreamLeases(rt.redis, keys.prefix).count()
    )
    in_use = {url: await rt.slots.in_use(url) for url in rt.backends}
    fresh = max(10.0, rt.settings.heartbeat_seconds * 5)
    now = time.time()
    alive = sum(1 for v in (workers or {}).values() if now - float(v) < fresh) if isinstance(workers, dict) else 0
    in_progress = sum(p["pending"] for p in pendings if isinstance(p, dict))

    def capacity(url: str) -> int:  # what it holds now (more than configured when its renders are fast)
        return rt.slots.capacity(url) if url in rt.slots.capacities else rt.settings.backend_slots

    return {
        m.QUEUE_DEPTH: {(p,): float(n) for p, n in depth.items()},
        m.QUEUE_DELAYED: {(): float(delayed if isinstance(delayed, int) else 0)},
        m.JOBS_IN_PROGRESS: {(): float(in_progress)},
        m.WORKERS_ALIVE: {(): float(alive)},
        m.BACKEND_CAPACITY: {(u,): float(capacity(u)) for u in rt.backends},
        m.BACKEND_SLOTS_IN_USE: {(u,): float(n) for u, n in in_use.items()},
        m.BACKEND_UP: {(u,): up for u, (up, _) in health.items()},
        m.BACKEND_QUEUE: {(u,): float(q) for u, (_, q) in health.items() if q is not None},
        m.WEBHOOKS_PENDING: {(): float(webhooks if isinstance(webhooks, int) else 0)},
        m.STREAMS_OPEN: {(kind,): float(n) for kind, n in streams.items()},
    }


async def scrape(rt: Runtime) -> bytes:
    """The Prometheus exposition of the whole fleet, read now."""
    await rt.metrics.flush()
    totals, gauges = await asyncio.gather(rt.metrics.totals(), live_gauges(rt))
    return m.exposition(m.families(totals, gauges, backends=list(rt.backends)))


__all__ = ["attempt_done", "attempt_failed", "live_gauges", "scrape"]
