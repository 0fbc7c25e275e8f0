"""The worker: claims jobs from the queue, runs each attempt, heart-beats it, and saves its final state.

A message is acknowledged only inside the script that saves the final state. On SIGTERM the worker stops
claiming, lets running attempts finish within a grace period, then releases the rest as their next attempt
(leaving their prompts running on ComfyUI for that attempt to adopt).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import pydantic
import structlog

from comfyflow.core import staging, telemetry
from comfyflow.core.attempt import AttemptContext
from comfyflow.core.queue import QueueReader
from comfyflow.core.reaper import Reaper, lost_errors
from comfyflow.core.redis_conn import Backoff, is_redis_down
from comfyflow.core.retention import RetentionSweeper
from comfyflow.core.runtime import Runtime
from comfyflow.core.slots import RELEASED
from comfyflow.core.steps import run_attempt
from comfyflow.core.store import Claim, QueueMessage
from comfyflow.core.storing import attempt_prefix, drop_other_attempts
from comfyflow.core.webhooks import WebhookService
from comfyflow.errors import ComfyflowError, LeaseLost
from comfyflow.models import ErrorInfo, JobResult

log = structlog.get_logger("comfyflow.worker")

Runner = Callable[[AttemptContext], Awaitable[JobResult]]


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def backoff(settings: object, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before the next attempt: doubling per attempt up to the cap, with jitter (half fixed, half random)
    so jobs that failed together (a backend restart) do not all come back at the same instant."""
    base = getattr(settings, "retry_backoff_seconds", 2.0)
    cap = getattr(settings, "retry_backoff_max_seconds", 60.0)
    delay = float(min(cap, base * 2 ** max(0, attempt - 1)))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


def classify(exc: BaseException) -> ErrorInfo:
    """An exception as the job's error; unknown exceptions count as transient (a bug fails after the retries)."""
    if isinstance(exc, ComfyflowError):
        return ErrorInfo(code=exc.code, message=exc.message, details=exc.details, transient=exc.transient)
    if isinstance(exc, pydantic.ValidationError):
        return ErrorInfo(code="VALIDATION_ERROR", message=str(exc), details=exc.errors(include_url=False))
    return ErrorInfo(code="INTERNAL_ERROR", message=f"{type(exc).__name__}: {exc}", transient=True)


async def _acquire_unless(sem: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take a slot of ``sem``, or give up as soon as ``stop`` is set (then holding nothing)."""
    if stop.is_set():
        return False
    acquire = asyncio.ensure_future(sem.acquire())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not acquire.done():
            acquire.cancel()
        await asyncio.gather(acquire, stopped, return_exceptions=True)
    got = acquire.done() and not acquire.cancelled() and acquire.exception() is None
    if got and stop.is_set():
        sem.release()
        return False
    return got


class Worker:
    """Runs up to ``concurrency`` attempts at once in this process."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        runner: Runner = run_attempt,
        name: str | None = None,
        concurrency: int | None = None,
        reaper_interval: float | None = None,
    ) -> None:
        self.rt = runtime
        self.runner = runner
        self.name = name or worker_name()
        self.concurrency = concurrency or runtime.settings.worker_concurrency
        self.reader = QueueReader(runtime.redis, runtime.store.keys, self.name, runtime.settings.priority_weights)
        self.reaper = Reaper(runtime.store, consumer=f"reaper-{self.name}")
        self.sweeper = RetentionSweeper(runtime)
        self.reaper_interval = reaper_interval if reaper_interval is not None else runtime.settings.lease_seconds / 2
        self.active: dict[str, tuple[AttemptContext, asyncio.Task[JobResult]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None, *, grace: float = 30.0) -> None:
        """Claim and run jobs until ``stop`` is set; then shut down gracefully."""
        stop = stop or asyncio.Event()
        sem = asyncio.Semaphore(self.concurrency)
        bg = [
            asyncio.create_task(self.reaper.run_forever(self.reaper_interval, self._stopping)),
            asyncio.create_task(self._listen_cancels()),
            asyncio.create_task(self._beat()),
            asyncio.create_task(self.sweeper.run_forever(self.rt.settings.retention_sweep_seconds, self._stopping)),
        ]
        if self.rt.settings.webhooks.enabled:  # signed job notifications (comfyflow/core/webhooks/)
            bg.append(asyncio.create_task(WebhookService(self.rt).run_forever(self._stopping)))
        log.info("worker started", worker=self.name, concurrency=self.concurrency)
        retry = Backoff(base=0.2, cap=5.0)
        try:
            while not stop.is_set():
                if not await _acquire_unless(sem, stop):  # stop claiming at once, even with every slot busy
                    break
                try:
                    msg = await self.reader.next(block_ms=500)
                except Exception as exc:  # Redis restarting: back off with jitter, reconnect, go on
                    sem.release()
                    delay = retry.next()
                    log.error("queue read failed", error=str(exc), retry_in=round(delay, 2))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    continue
                retry.reset()
                if msg is None:
                    sem.release()
                    continue
                if stop.is_set():  # read while stopping: hand it back to the queue for another worker
                    sem.release()
                    await self._hand_back(msg)
                    break
                task = asyncio.create_task(self._handle(msg, sem))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            await self.shutdown(grace)
            self._stopping.set()
            for t in bg:
                t.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
            log.info("worker stopped", worker=self.name)

    async def _hand_back(self, msg: QueueMessage) -> None:
        retry_info, final = lost_errors(self.rt.settings.lease_seconds, self.rt.settings.max_attempts)
        with contextlib.suppress(Exception):  # else the reaper redelivers it after the lease
            await self.rt.store.reclaim(msg, retry_info, final)

    async def shutdown(self, grace: float) -> None:
        """Let running attempts finish for ``grace`` seconds, then release the rest to the queue."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for ctx, task in list(self.active.values()):
            ctx.stop_reason = "shutdown"
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)

    async def _handle(self, msg: QueueMessage, sem: asyncio.Semaphore) -> None:
        try:
            claim = await self.rt.store.claim(msg, self.name)
            if claim is None:
                await self.rt.store.drop_message(msg)
                return
            raw = await self.rt.store.raw(claim.job_id)
            job = await self.rt.store.get(claim.job_id)
            if job is None:
                return
            # Bound once for every log line of this attempt (this task and the ones it starts).
            rid = {"request_id": raw["request_id"]} if raw.get("request_id") else {}
            structlog.contextvars.bind_contextvars(job_id=claim.job_id, attempt=claim.attempt, **rid)
            ctx = AttemptContext(self.rt, claim, job, raw)
            task: asyncio.Task[JobResult] = asyncio.ensure_future(self.runner(ctx))
            self.active[claim.job_id] = (ctx, task)
            hb = asyncio.create_task(self._heartbeat(ctx, task))
            committed: bool | None = None  # None: unknown (Redis failed around the commit)
            try:
                committed = await self._finish(ctx, task)
            finally:
                hb.cancel()
                telemetry.attempt_done(ctx)
                self.active.pop(claim.job_id, None)
                for lease in [] if ctx.slot_stays_taken else list(ctx.leases):
                    with contextlib.suppress(Exception):
                        await self.rt.slots.release(lease)
                await self._tidy(ctx, committed)
        except Exception as exc:
            if is_redis_down(exc):  # the job stays running in Redis; the reaper re-queues it once the lease lapses
                log.warning("job handling stopped: Redis unavailable", job_id=msg.job_id, error=str(exc))
            else:
                log.exception("job handling failed", job_id=msg.job_id, error=str(exc))
        finally:
            sem.release()

    async def _tidy(self, ctx: AttemptContext, committed: bool | None) -> None:
        """End of every attempt: its staged files go; objects it stored go unless it committed (then the objects
        of earlier attempts that never committed go). Best effort and bounded: the sweepers catch the rest.
        When the commit's outcome is unknown, or the job's result names this attempt's objects after all (a
        retried commit script answered "not ours" to its own first run), nothing in storage is touched."""
        job_id, attempt = ctx.claim.job_id, ctx.claim.attempt
        await asyncio.to_thread(staging.remove_attempt, self.rt.staging, job_id, attempt)
        prefix = attempt_prefix(job_id, attempt)
        try:
            async with asyncio.timeout(self.rt.settings.storage_call_timeout_seconds):
                if committed is False and f'"{prefix}/' not in (await self.rt.store.raw(job_id)).get("result", ""):
                    await self.rt.storage.delete_prefix(prefix)
                elif committed and attempt > 1 and ctx.result is not None:
                    await drop_other_attempts(self.rt.storage, job_id, ctx.result)
        except Exception as exc:
            ctx.log.warning("could not remove uncommitted objects", error=f"{type(exc).__name__}: {exc}")

    async def _finish(self, ctx: AttemptContext, task: asyncio.Task[JobResult]) -> bool:
        store, claim = self.rt.store, ctx.claim
        log_ = ctx.log
        try:
            result = await task
        except asyncio.CancelledError:
            if ctx.stop_reason == "canceled":
                await store.confirm_canceled(claim)
                log_.info("job canceled")
            elif ctx.stop_reason == "shutdown":
                info = ErrorInfo(code="WORKER_SHUTDOWN", message="worker shut down; attempt released", transient=True)
                await store.give_up_attempt(claim, info, delay=0, free=True)  # never uses up an attempt
                log_.info("attempt released on shutdown")
            elif ctx.stop_reason != "lost":
                raise
            return False
        except LeaseLost:
            ctx.stop_reason = ctx.stop_reason or "lost"
            log_.warning("attempt lost to another worker")
            return False
        except BaseException as exc:
            if is_redis_down(exc):
                raise  # no state can be saved; the lease lapses and the reaper re-queues the job
            await self._failed(ctx, exc)
            return False
        if await store.complete(claim, result):
            ctx.result = result
            log_.info("job succeeded", artifacts=len(result.artifacts), backend=result.backend)
            return True
        log_.warning("job finished but the attempt was no longer ours; result discarded")
        return False

    async def _failed(self, ctx: AttemptContext, exc: BaseException) -> None:
        info = classify(exc)
        telemetry.attempt_failed(ctx, info)
        store, claim = self.rt.store, ctx.claim
        if not info.transient:
            if await store.fail(claim, info):
                await self.sweeper.schedule_cleanup(claim.job_id)  # earlier attempts may have stored objects
            ctx.log.warning("job failed", code=info.code, error=info.message)
            return
        final = info.model_copy(
            update={"message": f"{info.message} (gave up after {claim.attempt} attempts)", "transient": False}
        )
        delay = backoff(self.rt.settings, claim.attempt)
        outcome, attempt = await store.give_up_attempt(claim, info, delay=delay, final=final)
        if outcome == "failed":
            await self.sweeper.schedule_cleanup(claim.job_id)  # remove what any attempt's store step wrote
        ctx.log.warning("attempt failed", code=info.code, error=info.message, outcome=outcome, next_attempt=attempt)

    async def _heartbeat(self, ctx: AttemptContext, task: asyncio.Task[JobResult]) -> None:
        interval = self.rt.settings.heartbeat_seconds
        while not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.wake.wait(), timeout=interval)
            ctx.wake.clear()
            try:
                state = await self.rt.store.heartbeat(ctx.claim)
                for lease in list(ctx.leases) if state == "ok" else []:  # a lost attempt's slot is the next one's
                    if not await self.rt.slots.hold(lease):
                        ctx.log.warning(
                            "slot lease expired while this worker was slow and the slot was taken; the backend may "
                            "hold one prompt more than its slots until this one ends",
                            backend=lease.backend,
                        )
                    elif lease not in ctx.leases:  # released while we renewed it: do not take it back
                        await self.rt.slots.release(lease)
            except Exception as exc:  # Redis blip: the lease has slack, try again next beat
                log.warning("heartbeat failed", job_id=ctx.claim.job_id, error=str(exc))
                continue
            if state in ("cancel", "lost") and not task.done():
                ctx.stop_reason = "canceled" if state == "cancel" else "lost"
                task.cancel()
                return

    async def _listen_cancels(self) -> None:
        """Cancel requests (and freed GPU slots) arrive on a pub/sub channel so a running job stops, and a waiting
        one takes a slot, within milliseconds."""
        while not self._stopping.is_set():
            try:
                async with self.rt.redis.pubsub() as ps:
                    await ps.subscribe(self.rt.store.keys.control)
                    async for message in ps.listen():
                        if message.get("type") != "message":
                            continue
                        job_id = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
                        if job_id.startswith(RELEASED):  # a slot freed somewhere: its waiters here try now
                            self.rt.slots.notify_released()
                            continue
                        entry = self.active.get(job_id)
                        if entry:
                            entry[0].wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel listener reconnecting", error=str(exc))
                await asyncio.sleep(1)

    async def _beat(self) -> None:
        """Announce this worker (for /health)."""
        while True:
            with contextlib.suppress(Exception):
                await self.rt.redis.hset(self.rt.store.keys.workers, self.name, repr(time.time()))
            await asyncio.sleep(max(1.0, self.rt.settings.heartbeat_seconds))


__all__ = ["Claim", "Runner", "Worker"]
