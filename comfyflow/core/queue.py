"""Reading the durable queue: three Redis Streams (high, normal, low) shared by one consumer group.

Which class a worker reads next is decided by stride scheduling over the configured weights, so high goes
first when everything waits, and low still gets its share: it is never starved.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from comfyflow.core.keys import GROUP, PRIORITIES, Keys
from comfyflow.core.redis_conn import is_nogroup
from comfyflow.core.store import QueueMessage
from comfyflow.models import Priority


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StrideScheduler:
    """Deterministic weighted fair choice among priority classes."""

    def __init__(self, weights: dict[str, int]) -> None:
        self.stride = {p: 1.0 / weights[p.value] for p in PRIORITIES}
        self.passes = {p: 0.0 for p in PRIORITIES}

    def order(self) -> list[Priority]:
        """Classes to try, best first (lowest pass; ties by priority)."""
        return sorted(PRIORITIES, key=lambda p: (self.passes[p], PRIORITIES.index(p)))

    def charge(self, chosen: Priority, skipped: list[Priority]) -> None:
        """Account one claim from ``chosen``; classes found empty do not bank credit while idle."""
        floor = self.passes[chosen]
        for p in skipped:
            self.passes[p] = max(self.passes[p], floor)
        self.passes[chosen] += self.stride[chosen]
        low = min(self.passes.values())
        if low > 1e6:
            self.passes = {p: v - low for p, v in self.passes.items()}


async def ensure_group(redis: Redis, stream: str) -> bool:
    """Create the queue's consumer group (and the stream) unless it exists. True when it had to be created.

    Starting at id 0, so jobs submitted after Redis lost the group (their XADD made a group-less stream) run.
    """
    try:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


async def missing_groups(redis: Redis, keys: Keys) -> list[str]:
    """The queue streams whose consumer group is missing (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    for prio in PRIORITIES:
        pipe.xinfo_groups(keys.queue(prio))
    res = await pipe.execute(raise_on_error=False)
    out = []
    for prio, groups in zip(PRIORITIES, res, strict=True):
        if isinstance(groups, Exception) and not str(groups).startswith("no such key"):
            raise groups
        names = [] if isinstance(groups, Exception) else [_s(g.get("name", b"")) for g in groups]
        if GROUP not in names:
            out.append(prio.value)
    return out


def parse_entry(stream: str, msg_id: Any, fields: dict[Any, Any]) -> QueueMessage:
    f = {_s(k): _s(v) for k, v in fields.items()}
    return QueueMessage(stream=stream, msg_id=_s(msg_id), job_id=f["job"], attempt=int(f["attempt"]))


class QueueReader:
    """One worker's view of the queue."""

    def __init__(self, redis: Redis, keys: Keys, consumer: str, weights: dict[str, int]) -> None:
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self.scheduler = StrideScheduler(weights)
        self._notify_id: str | None = None

    async def _read(self, priority: Priority) -> QueueMessage | None:
        stream = self.keys.queue(priority)
        try:
            res: Any = await self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=1)
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            await ensure_group(self.redis, stream)  # Redis lost its data: heal, then read what was added since
            res = await self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=1)
        for _name, entries in res or []:
            for msg_id, fields in entries:
                return parse_entry(stream, msg_id, fields)
        return None

    async def try_next(self) -> QueueMessage | None:
        """The next message by priority schedule, without waiting."""
        skipped: list[Priority] = []
        for prio in self.scheduler.order():
            msg = await self._read(prio)
            if msg is not None:
                self.scheduler.charge(prio, skipped)
                return msg
            skipped.append(prio)
        return None

    async def next(self, block_ms: int) -> QueueMessage | None:
        """The next message, waiting up to ``block_ms`` for a submit to wake us."""
        if self._notify_id is None:
            last = await self.redis.xrevrange(self.keys.notify, count=1)
            self._notify_id = _s(last[0][0]) if last else "0-0"
        msg = await self.try_next()
        if msg is not None:
            return msg
        res: Any = await self.redis.xread({self.keys.notify: self._notify_id}, count=100, block=block_ms)
        for _name, entries in res or []:
            if entries:
                self._notify_id = _s(entries[-1][0])
        return await self.try_next() if res else None

    async def depth(self) -> dict[str, int]:
        """Jobs waiting per priority."""
        return await queue_depth(self.redis, self.keys)


async def queue_depth(redis: Redis, keys: Keys) -> dict[str, int]:
    """Jobs waiting per priority (not yet delivered to a worker), in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for prio in PRIORITIES:
        pipe.xlen(keys.queue(prio))
        pipe.xpending(keys.queue(prio), GROUP)
    res = await pipe.execute(raise_on_error=False)
    out: dict[str, int] = {}
    for i, prio in enumerate(PRIORITIES):
        length, pending = res[2 * i], res[2 * i + 1]
        pending_n = pending["pending"] if isinstance(pending, dict) else 0
        out[prio.value] = max(0, int(length if isinstance(length, int) else 0) - int(pending_n))
    return out
