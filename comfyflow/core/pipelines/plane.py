"""The run plane: every worker process watches batches and runs pipelines, under leases in Redis.

A batch or pipeline run is a member of ``keys.runs`` (``batch:<id>``, ``prun:<id>``) scored by the lease expiry
of the process that holds it (0 = nobody yet). A runner claims what is free or lapsed (``run_claim.lua``),
heart-beats its leases (``run_beat.lua``), and lets go when the run ends. A runner killed with SIGKILL stops
heart-beating, and another one takes its runs over within a lease: state is only in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from comfyflow.core.runtime import Runtime

log = structlog.get_logger("comfyflow.plane")

#: One handler per kind: run (or watch) the run with this id until it ends; the lease is held meanwhile.
Handler = Callable[[str], Awaitable[None]]


def runner_name() -> str:
    return f"plane-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Leases:
    """Claim, renew and give up runs of the plane."""

    def __init__(self, runtime: Runtime, runner: str, *, lease_seconds: float | None = None) -> None:
        self.rt = runtime
        self.runner = runner
        self.lease_ms = int((lease_seconds or runtime.settings.lease_seconds) * 1000)

    def _record(self, member: str) -> str:
        return f"{self.rt.store.keys.prefix}:{member}"

    async def claim(self, limit: int) -> list[str]:
        keys = self.rt.store.keys
        args = [keys.prefix, int(time.time() * 1000), self.lease_ms, self.runner, limit]
        return [_s(m) for m in await self.rt.store.scripts.run("run_claim", [keys.runs], args)]

    async def _beat(self, member: str, mode: str) -> bool:
        keys = [self.rt.store.keys.runs, self._record(member)]
        args = [member, self.runner, int(time.time() * 1000), self.lease_ms, mode]
        return _s(await self.rt.store.scripts.run("run_beat", keys, args)) == "ok"

    async def beat(self, member: str) -> bool:
        """Renew the lease; False when another runner holds the run now."""
        return await self._beat(member, "beat")

    async def release(self, member: str) -> None:
        """Give the run back unfinished (shutting down): another runner takes it at once."""
        await self._beat(member, "release")

    async def done(self, member: str) -> None:
        """The run ended: take it off the plane."""
        await self._beat(member, "done")


class RunPlane:
    """Claims runs and runs a handler for each, up to ``concurrency`` at once, each under a heart-beaten lease."""

    def __init__(
        self,
        runtime: Runtime,
        handlers: dict[str, Handler],
        *,
        concurrency: int = 64,
        poll: float = 0.5,
        name: str | None = None,
    ) -> None:
        self.rt = runtime
        self.handlers = handlers
        self.concurrency = concurrency
        self.poll = poll
        self.leases = Leases(runtime, name or runner_name())
        self.active: dict[str, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run until ``stop`` is set; then give back the runs still going."""
        try:
            while not stop.is_set():
                free = self.concurrency - len(self.active)
                if free > 0:
                    try:
                        for member in await self.leases.claim(free):
                            self._start(member)
                    except Exception as exc:  # Redis restarting: try again next round
                        log.warning("claiming runs failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll)
        finally:
            tasks = list(self.active.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, member: str) -> None:
        kind, _, run_id = member.partition(":")
        handler = self.handlers.get(kind)
        if handler is None or member in self.active:
            return
        task = asyncio.create_task(self._hold(member, handler(run_id)))
        self.active[member] = task
        task.add_done_callback(lambda _t: self.active.pop(member, None))

    async def _hold(self, member: str, work: Awaitable[None]) -> None:
        """Run ``work`` while renewing the lease; stop it if the lease is lost."""
        job = asyncio.ensure_future(work)
        interval = self.leases.lease_ms / 3000
        finished = False
        try:
            while not job.done():
                done, _ = await asyncio.wait({job}, timeout=interval)
                if done:
                    break
                try:
                    if not await self.leases.beat(member):
                        log.warning("run lost to another runner", run=member)
                        job.cancel()
                        return
                except Exception as exc:  # Redis blip: the lease has slack
                    log.warning("run heartbeat failed", run=member, error=str(exc))
            job.result()
            finished = True
        except asyncio.CancelledError:
            job.cancel()
            with contextlib.suppress(BaseException):
                await job
            with contextlib.suppress(Exception):
                await asyncio.shield(self.leases.release(member))
            raise
        except Exception as exc:  # leave the lease to lapse: this or another runner tries again after it
            log.exception("run handler failed", run=member, error=str(exc))
        finally:
            if finished:
                with contextlib.suppress(Exception):
                    await self.leases.done(member)
