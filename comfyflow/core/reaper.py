"""The reaper: reclaims attempts whose worker stopped heart-beating, and releases due retries.

Prefect does not notice a worker killed with SIGKILL (its run stays "Running"); the queue does. A worker
renews its lease by re-claiming its own message (which resets the message's idle time), so a message idle for
longer than the lease belongs to a dead or partitioned worker. The reaper takes it with XAUTOCLAIM and the
``reclaim`` script turns it into attempt n+1 (or a final failure), atomically. Any number of reapers may run.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from redis.exceptions import ResponseError

from comfyflow.core.keys import GROUP, PRIORITIES
from comfyflow.core.queue import ensure_group, parse_entry
from comfyflow.core.redis_conn import is_nogroup
from comfyflow.core.store import JobStore
from comfyflow.models import ErrorInfo

log = structlog.get_logger("comfyflow.reaper")


def lost_errors(lease: float, max_attempts: int) -> tuple[ErrorInfo, ErrorInfo]:
    retry = ErrorInfo(
        code="WORKER_LOST",
        message=f"The worker running this job stopped heart-beating for {lease:.0f}s (killed, or cut off from "
        "Redis); the job runs again as its next attempt.",
        transient=True,
    )
    final = ErrorInfo(
        code="WORKER_LOST",
        message=f"The job's worker was lost on its last allowed attempt ({max_attempts}); giving up. Check the "
        "workers' logs for crashes (out of memory, SIGKILL), then retry the job.",
        transient=True,
    )
    return retry, final


class Reaper:
    def __init__(self, store: JobStore, consumer: str = "reaper") -> None:
        self.store = store
        self.consumer = consumer

    async def run_once(self, *, min_idle_ms: int | None = None) -> dict[str, int]:
        """One sweep: reclaim lapsed leases on every queue, then promote due retries."""
        counts: dict[str, int] = {}
        lease_ms = int(self.store.settings.lease_seconds * 1000) if min_idle_ms is None else min_idle_ms
        retry, final = lost_errors(self.store.settings.lease_seconds, self.store.settings.max_attempts)
        for prio in PRIORITIES:
            stream = self.store.keys.queue(prio)
            start = "0-0"
            while True:
                try:
                    res: Any = await self.store.redis.xautoclaim(
                        stream, GROUP, self.consumer, min_idle_time=lease_ms, start_id=start, count=100
                    )
                except ResponseError as exc:
                    if not is_nogroup(exc):
                        raise
                    if await ensure_group(self.store.redis, stream):  # Redis lost its data: nothing to reclaim
                        log.warning("queue consumer group recreated", stream=stream)
                    break
                start, entries = res[0], res[1]
                for msg_id, fields in entries:
                    if not fields:  # deleted meanwhile
                        await self.store.redis.xack(stream, GROUP, msg_id)
                        continue
                    msg = parse_entry(stream, msg_id, fields)
                    outcome = await self.store.reclaim(msg, retry, final)
                    counts[outcome] = counts.get(outcome, 0) + 1
                    if outcome not in ("stale", "gone"):
                        log.warning("reclaimed job", job_id=msg.job_id, attempt=msg.attempt, outcome=outcome)
                if start in ("0-0", b"0-0"):
                    break
        promoted = await self.store.promote_due()
        if promoted:
            counts["promoted"] = promoted
        return counts

    async def run_forever(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # keep sweeping; Redis may be restarting
                log.error("reaper sweep failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
