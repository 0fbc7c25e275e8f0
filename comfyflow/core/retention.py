"""Retention: delete artifacts past their role's retention and mark their jobs ``expired``; their Prefect flow
runs are then deleted too (queued here, deleted by the executor), so Prefect's database does not grow forever.

Safe on several workers at once: deleting a prefix is idempotent and the state change is one atomic script.
Failed jobs whose store step left some files behind are put on the same schedule (due at once) so their
partial artifacts are removed as soon as storage answers again.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from comfyflow.core import staging
from comfyflow.core.runtime import Runtime

log = structlog.get_logger("comfyflow.retention")
#: Expired jobs whose flow runs wait to be deleted from Prefect, at most (a Prefect down for weeks loses the oldest).
PREFECT_GC_MAX = 100_000


class RetentionSweeper:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def schedule_cleanup(self, job_id: str) -> None:
        """Delete this job's files at the next sweep (used when a job failed in its store step)."""
        await self.rt.redis.zadd(self.rt.store.keys.retention, {job_id: self.rt.store.clock()})

    async def run_once(self, limit: int = 200) -> int:
        """Delete what is due; return how many jobs were handled. Also sweeps staged files that killed
        processes left behind (core/staging.py)."""
        store = self.rt.store
        try:
            swept = await staging.sweep(self.rt.staging, self.rt.redis, store.keys)
            if swept:
                log.info("staging swept", folders=swept)
        except Exception as exc:
            log.warning("staging sweep failed", error=str(exc))
        due = await self.rt.redis.zrangebyscore(store.keys.retention, "-inf", store.clock(), start=0, num=limit)
        done = 0
        for raw_id in due:
            job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                removed = await self.rt.storage.delete_prefix(f"jobs/{job_id}")
            except Exception as exc:  # storage down: the entry stays, the next sweep tries again
                log.warning("retention delete failed", job_id=job_id, error=str(exc))
                continue
            keys = [store.keys.job(job_id), store.keys.events(job_id), store.keys.retention]
            state = await store.scripts.run("expire", keys, [job_id, repr(store.clock()), store.ttl])
            if self.rt.settings.prefect_enabled:  # its flow runs go too (flows/executor.py drains the list)
                async with self.rt.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(store.keys.prefect_gc, job_id)
                    pipe.ltrim(store.keys.prefect_gc, -PREFECT_GC_MAX, -1)
                    await pipe.execute()
            log.info("retention swept", job_id=job_id, files=removed, state=state)
            done += 1
        return done

    async def run_forever(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:
                log.error("retention sweep failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
