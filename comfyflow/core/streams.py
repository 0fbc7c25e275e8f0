"""Open progress streams as leases in Redis: a per-owner cap that holds across API processes, and the fleet's
count of open streams for the metrics.

Each open stream is a member of its owner's sorted set and of its kind's (``sse``, ``ws``), scored by the time its
lease runs out. The API renews the lease while the stream is open and removes it when it ends; a stream of an API
process that died drops out when its lease runs out, so the cap never leaks.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

LEASE_SECONDS = 60.0
KINDS = ("sse", "ws")
# KEYS: owner set, kind set   ARGV: token, now, lease until, cap, key ttl. 1 = opened, 0 = at the cap.
OPEN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


class StreamLeases:
    """The open streams of the fleet, under one key prefix."""

    #: How often an open stream renews its lease (well inside LEASE_SECONDS).
    RENEW_SECONDS = LEASE_SECONDS / 3

    def __init__(self, redis: Any, prefix: str, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease = lease_seconds
        self._open = redis.register_script(OPEN)

    def owner_key(self, owner: str) -> str:
        return f"{self.prefix}:streams:owner:{hashlib.sha256(owner.encode()).hexdigest()[:32]}"

    def kind_key(self, kind: str) -> str:
        return f"{self.prefix}:streams:{kind}"

    async def open(self, owner: str, kind: str, cap: int) -> str | None:
        """A token for a new stream of ``owner``, or None when it has ``cap`` streams open already."""
        token = uuid.uuid4().hex
        now = time.time()
        args = [token, now, now + self.lease, cap, int(self.lease * 2)]
        opened = await self._open(keys=[self.owner_key(owner), self.kind_key(kind)], args=args)
        return token if int(opened) == 1 else None

    async def renew(self, owner: str, kind: str, token: str) -> None:
        until = time.time() + self.lease
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (self.owner_key(owner), self.kind_key(kind)):
                pipe.zadd(key, {token: until}, xx=True)
                pipe.expire(key, int(self.lease * 2))
            await pipe.execute()

    async def close(self, owner: str, kind: str, token: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.owner_key(owner), token)
            pipe.zrem(self.kind_key(kind), token)
            await pipe.execute()

    async def count(self) -> dict[str, int]:
        """Open streams of the whole fleet, by kind."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind in KINDS:
                pipe.zcount(self.kind_key(kind), now, "+inf")
            counts = await pipe.execute()
        return {kind: int(n) for kind, n in zip(KINDS, counts, strict=True)}
