"""GPU slots: a slot is a lease on one backend, held in Redis with expiry so a dead worker cannot leak one.

A backend's capacity counts prompts inside ComfyUI (the running one plus those waiting behind it), so with the
default of 2 there is always one prompt queued on the GPU while comfyflow does its bookkeeping for the next.
When renders are fast, one waiting prompt does not cover that bookkeeping (at 0.1 s renders on four backends,
comfyflow's handover between two prompts took longer than a render and the GPUs idled a fifth of the time), so a
backend holds as many prompts as cover ``queue_seconds`` of its measured render time, within ``max_slots``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from comfyflow.core.keys import Keys
from comfyflow.core.scripts import Scripts

#: The longest a waiter sleeps between two looks at the slots. Waiters wake as soon as a slot is freed (by this
#: process directly, by another through the control channel, see ``RELEASED``); the poll finds expired leases.
MAX_POLL_SECONDS = 0.25
#: Weight of the newest render in a backend's running average of render seconds.
RENDER_WEIGHT = 0.2
#: Prefix of the control-channel message that says a slot was freed (job ids, the channel's other messages,
#: are hex and never start with it).
RELEASED = "slot:"


@dataclass(frozen=True)
class SlotLease:
    backend: str
    token: str


class SlotPool:
    """Leases on backends' capacity, least loaded first."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        capacities: dict[str, int],
        *,
        lease_seconds: float,
        queue_seconds: float = 0.0,
        max_slots: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.capacities = dict(capacities)  # configured: the least each backend holds
        self.queue_seconds = queue_seconds
        self.max_slots = max_slots
        #: Running average of each backend's render seconds (from ComfyUI's start of execution to its end).
        self.render_seconds: dict[str, float] = {}
        self.lease_ms = int(lease_seconds * 1000)
        self.clock = clock
        self.scripts = Scripts(redis)
        #: Set (and replaced) whenever a slot is freed, so waiters take it at once instead of at their next poll.
        self._released = asyncio.Event()

    def capacity(self, backend: str) -> int:
        """Prompts the backend may hold: its configured slots, or, when its renders are fast, one running plus as
        many waiting as cover ``queue_seconds`` of rendering (at most ``max_slots``). A backend of one slot keeps
        one: nothing waits in its ComfyUI, as configured (a job of higher priority never queues behind another)."""
        configured = self.capacities[backend]
        seconds = self.render_seconds.get(backend)
        if configured < 2 or not seconds or self.queue_seconds <= 0:
            return configured
        return max(configured, min(self.max_slots, 1 + math.ceil(self.queue_seconds / seconds)))

    def observe_render(self, backend: str, seconds: float) -> None:
        """A prompt executed for ``seconds`` on the backend."""
        if seconds <= 0:
            return
        last = self.render_seconds.get(backend)
        self.render_seconds[backend] = seconds if last is None else last + RENDER_WEIGHT * (seconds - last)

    async def try_acquire(self, candidates: Sequence[str], token: str | None = None) -> SlotLease | None:
        """Take a slot on the least-loaded candidate with room, or None when all are full."""
        cands = [c for c in candidates if c in self.capacities]
        if not cands:
            return None
        token = token or uuid.uuid4().hex
        keys = [self.keys.slots(c) for c in cands]
        args = [int(self.clock() * 1000), self.lease_ms, token, *[self.capacity(c) for c in cands]]
        idx = int(await self.scripts.run("slot_acquire", keys, args))
        return SlotLease(cands[idx - 1], token) if idx else None

    async def acquire(
        self, candidates: Sequence[str], *, timeout: float, poll: float = 0.02, token: str | None = None
    ) -> SlotLease:
        """Wait for a slot. Raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            lease = await self.try_acquire(candidates, token)
            if lease is not None:
                return lease
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no free slot on {list(candidates)} within {timeout:.0f}s")
            await self.wait_released(delay)
            delay = min(delay * 1.5, MAX_POLL_SECONDS)

    async def renew(self, lease: SlotLease) -> bool:
        """Extend the lease; False if it had expired and been dropped (the slot is not ours any more)."""
        key = self.keys.slots(lease.backend)
        res = await self.redis.zadd(key, {lease.token: int(self.clock() * 1000) + self.lease_ms}, xx=True, ch=True)
        return bool(res) or await self.redis.zscore(key, lease.token) is not None

    async def hold(self, lease: SlotLease) -> bool:
        """Renew the lease; when it had expired (its holder was slow), take the slot again if there is room.
        False: the slot went to someone else meanwhile."""
        if await self.renew(lease):
            return True
        return await self.try_acquire([lease.backend], lease.token) is not None

    async def release(self, lease: SlotLease) -> None:
        """Free the slot and tell every process's waiters (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.slots(lease.backend), lease.token)
            pipe.publish(self.keys.control, f"{RELEASED}{lease.backend}")
            await pipe.execute()
        self.notify_released()

    def notify_released(self) -> None:
        """Wake this process's waiters (called on release, and by the worker's control-channel listener)."""
        self._released.set()
        self._released = asyncio.Event()

    async def wait_released(self, timeout: float) -> None:
        """Return when this process frees a slot, or after ``timeout`` seconds (the poll for everything else)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout)

    async def has_room(self, candidates: Sequence[str]) -> bool:
        """Whether any candidate has a free slot right now (a hint: another worker may take it first)."""
        now = int(self.clock() * 1000)
        for url in candidates:
            if url in self.capacities:
                key = self.keys.slots(url)
                if await self.redis.zcount(key, now, "+inf") < self.capacity(url):
                    return True
        return False

    async def in_use(self, backend: str) -> int:
        key = self.keys.slots(backend)
        await self.redis.zremrangebyscore(key, "-inf", int(self.clock() * 1000))
        return int(await self.redis.zcard(key))
