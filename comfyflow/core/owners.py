"""What the engine enforces per owner, as the API's policy records it: the running-job limit.

The claim script reads ``max_running`` from the owner's limits hash; a job claimed beyond it is parked (still
queued) and put back on its queue when one of the owner's jobs stops running (``lua/lib.lua``).
"""

from __future__ import annotations

from redis.asyncio import Redis

from comfyflow.core.keys import Keys

#: The limits hash outlives idle owners for this long; every submission renews it.
LIMITS_TTL_SECONDS = 90 * 86400


async def set_owner_limits(redis: Redis, keys: Keys, owner: str, *, max_running: int | None, role: str) -> None:
    """Record ``owner``'s running-job limit (None = unlimited) and role for the workers."""
    key = keys.owner_limits(owner)
    async with redis.pipeline(transaction=True) as pipe:
        if max_running is None:
            pipe.hdel(key, "max_running")
        else:
            pipe.hset(key, "max_running", str(max_running))
        pipe.hset(key, "role", role)
        pipe.expire(key, LIMITS_TTL_SECONDS)
        await pipe.execute()


async def running_jobs(redis: Redis, keys: Keys, owner: str) -> set[str]:
    """Ids of ``owner``'s jobs that run now (as the claim script counts them)."""
    return {m.decode() if isinstance(m, bytes) else str(m) for m in await redis.smembers(keys.owner_running(owner))}


async def parked_jobs(redis: Redis, keys: Keys, owner: str) -> list[str]:
    """Ids of ``owner``'s jobs parked at its running limit, in arrival order (canceled ones may linger)."""
    raw = await redis.lrange(keys.owner_waiting(owner), 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]
