"""The delivery loop every worker process runs: watch job events, then send what is due."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from comfyflow.core.runtime import Runtime
from comfyflow.core.webhooks.outbox import Outbox
from comfyflow.core.webhooks.sender import Sender
from comfyflow.core.webhooks.signing import Signer, webhook_secret
from comfyflow.core.webhooks.watcher import Watcher

log = structlog.get_logger("comfyflow.webhooks")


def outbox_for(rt: Runtime) -> Outbox:
    """The process's outbox (made once per runtime)."""
    box = rt.extras.get("webhook_outbox")
    if box is None:
        box = rt.extras["webhook_outbox"] = Outbox(rt.redis, rt.settings.key_prefix, ttl=rt.settings.job_ttl_seconds)
    return box  # type: ignore[no-any-return]


class WebhookService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings.webhooks
        self.outbox = outbox_for(runtime)
        self.watcher = Watcher(runtime, self.outbox)
        self.inflight: dict[asyncio.Task[Any], str] = {}
        self._job_locks: dict[str, asyncio.Lock] = {}

    @property
    def lease_seconds(self) -> float:
        return self.settings.timeout_seconds + 30.0

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set. In-flight tries are abandoned on exit; their leases make them due again."""
        signer = Signer(webhook_secret(self.rt.settings))
        async with Sender(self.outbox, signer, self.settings, self.rt.metrics) as sender:
            try:
                while not stop.is_set():
                    try:
                        await self.watcher.run_once()
                        free = self.settings.concurrency - len(self.inflight)
                        claimed = await self.outbox.claim_due(free, self.lease_seconds)
                        for delivery_id, job_id in zip(claimed, await self.outbox.job_ids(claimed), strict=True):
                            task = asyncio.create_task(self._in_order(sender, delivery_id, job_id))
                            self.inflight[task] = delivery_id
                            task.add_done_callback(self._done)
                    except Exception as exc:  # Redis restarting: try again next round
                        log.warning("webhook loop failed", error=str(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_seconds)
            finally:
                abandoned = list(self.inflight.values())
                for task in list(self.inflight):
                    task.cancel()
                await asyncio.gather(*self.inflight, return_exceptions=True)
                with contextlib.suppress(Exception):  # due again now, not when their leases end
                    await self.outbox.release(abandoned)

    async def _in_order(self, sender: Sender, delivery_id: str, job_id: str) -> None:
        """One job's deliveries one after another, in the order they were claimed: the lock is each task's first
        await, and asyncio locks are FIFO."""
        lock = self._job_locks.setdefault(job_id, asyncio.Lock())
        try:
            async with lock:
                await sender.deliver(delivery_id)
        finally:
            if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                self._job_locks.pop(job_id, None)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhook delivery crashed", error=str(task.exception()))
