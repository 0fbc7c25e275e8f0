"""The webhook outbox in Redis: deliveries, their schedule, their attempt logs, and the watch list.

Layout (under the key prefix):
  wh:jobs          zset   jobs with a webhook that are live (added by submit.lua / retry.lua)
  wh:cur, wh:mile  hashes job -> last event read, last progress milestone sent
  wh:due           zset   delivery -> when it is due (ms); while a try is in flight, when its lease ends
  wh:d:{id}        hash   one delivery: job_id, event, url, payload, status, tries, attempts, ...
  wh:att:{id}      list   one JSON record per try
  wh:log:{job}     list   the job's delivery ids, oldest first

A delivery is created once per (job, event, milestone) with a deterministic id, so turning events into
deliveries twice (two watchers, or a rescan after a retry) never sends one twice; ``wh:due`` is a lease queue,
so a worker killed mid-try leaves the delivery due again when its lease ends (at-least-once, same
``webhook-id`` for the receiver to de-duplicate). A job's deliveries are sent in event order by one process;
a delivery waiting for its retry does not hold the next ones back, so receivers order by ``timestamp``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

FINAL = ("delivered", "failed")

# KEYS: cursors, milestones, due, jobs
# ARGV: prefix, job_id, expected cursor ('' = none), new cursor, milestone ('' = unchanged), done, now_ms, ttl,
#       n, then per delivery: id, event, url, payload
_ADVANCE = """
local cur = redis.call('HGET', KEYS[1], ARGV[2]) or ''
if cur ~= ARGV[3] then return 0 end
if ARGV[6] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], ARGV[2], ARGV[5]) end
end
local ttl = tonumber(ARGV[8])
local logkey = ARGV[1] .. ':wh:log:' .. ARGV[2]
for i = 0, tonumber(ARGV[9]) - 1 do
  local b = 10 + i * 4
  local dkey = ARGV[1] .. ':wh:d:' .. ARGV[b]
  if redis.call('EXISTS', dkey) == 0 then
    redis.call('HSET', dkey, 'id', ARGV[b], 'job_id', ARGV[2], 'event', ARGV[b + 1], 'url', ARGV[b + 2],
      'payload', ARGV[b + 3], 'status', 'pending', 'tries', 0, 'attempts', 0, 'trigger', 'initial',
      'created_at', ARGV[7], 'next_at', ARGV[7])
    redis.call('EXPIRE', dkey, ttl)
    redis.call('RPUSH', logkey, ARGV[b])
    redis.call('EXPIRE', logkey, ttl)
    redis.call('ZADD', KEYS[3], tonumber(ARGV[7]) + i, ARGV[b])  -- due in event order
  end
end
return 1
"""

# KEYS: due   ARGV: now_ms, lease_ms, limit
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return ids
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class WebhookKeys:
    prefix: str

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:wh:jobs"

    @property
    def cursors(self) -> str:
        return f"{self.prefix}:wh:cur"

    @property
    def milestones(self) -> str:
        return f"{self.prefix}:wh:mile"

    @property
    def due(self) -> str:
        return f"{self.prefix}:wh:due"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:wh:d:{delivery_id}"

    def attempts(self, delivery_id: str) -> str:
        return f"{self.prefix}:wh:att:{delivery_id}"

    def log(self, job_id: str) -> str:
        return f"{self.prefix}:wh:log:{job_id}"


@dataclass(frozen=True)
class NewDelivery:
    id: str
    event: str
    url: str
    payload: str


class Outbox:
    """Deliveries in Redis. Cheap to create; share one per process."""

    def __init__(self, redis: Redis, prefix: str, *, ttl: int) -> None:
        self.redis = redis
        self.keys = WebhookKeys(prefix)
        self.ttl = ttl
        self._advance = redis.register_script(_ADVANCE)
        self._claim = redis.register_script(_CLAIM)

    async def advance(
        self, job_id: str, expected: str, cursor: str, milestone: int | None, done: bool, new: list[NewDelivery]
    ) -> bool:
        """Move the job's event cursor from ``expected`` to ``cursor`` and create ``new`` deliveries, atomically.
        False when another watcher moved the cursor first (nothing was written)."""
        k = self.keys
        args: list[Any] = [
            k.prefix, job_id, expected, cursor, "" if milestone is None else milestone, "1" if done else "0",
            int(time.time() * 1000), self.ttl, len(new),
        ]  # fmt: skip
        for d in new:
            args += [d.id, d.event, d.url, d.payload]
        return bool(await self._advance(keys=[k.cursors, k.milestones, k.due, k.jobs], args=args))

    async def claim_due(self, limit: int, lease_seconds: float) -> list[str]:
        """Up to ``limit`` due deliveries, leased for ``lease_seconds`` (due again if the try never reports)."""
        if limit <= 0:
            return []
        ids = await self._claim(keys=[self.keys.due], args=[int(time.time() * 1000), int(lease_seconds * 1000), limit])
        return [_s(i) for i in ids]

    async def job_ids(self, delivery_ids: list[str]) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for i in delivery_ids:
            pipe.hget(self.keys.delivery(i), "job_id")
        return [_s(j) if j else "" for j in await pipe.execute()] if delivery_ids else []

    async def get(self, delivery_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.delivery(delivery_id))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def start_try(self, delivery_id: str) -> tuple[int, int]:
        """Count a try; returns (tries in this round, attempts in all)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(self.keys.delivery(delivery_id), "tries", 1)
        pipe.hincrby(self.keys.delivery(delivery_id), "attempts", 1)
        tries, attempts = await pipe.execute()
        return int(tries), int(attempts)

    async def record(self, delivery_id: str, attempt: dict[str, Any], *, status: str, next_at: float | None) -> None:
        """Log one try and schedule the next (``next_at``, epoch seconds) or end the round."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(k.attempts(delivery_id), json.dumps(attempt, separators=(",", ":")))
        pipe.expire(k.attempts(delivery_id), self.ttl)
        fields: dict[Any, Any] = {
            "status": status,
            "trigger": "retry",
            "last_code": attempt.get("status_code") or "",
            "last_error": attempt.get("error") or "",
            "updated_at": int(time.time() * 1000),
            "next_at": int(next_at * 1000) if next_at is not None else "",
        }
        pipe.hset(k.delivery(delivery_id), mapping=fields)
        if next_at is not None:
            pipe.zadd(k.due, {delivery_id: int(next_at * 1000)})
        else:
            pipe.zrem(k.due, delivery_id)
        await pipe.execute()

    async def release(self, delivery_ids: list[str]) -> None:
        """Make leased deliveries due now (a process shutting down mid-try); finished ones stay finished."""
        if delivery_ids:
            now = int(time.time() * 1000)
            await self.redis.zadd(self.keys.due, dict.fromkeys(delivery_ids, now), xx=True)

    async def drop(self, delivery_id: str) -> None:
        await self.redis.zrem(self.keys.due, delivery_id)

    async def replay(self, delivery_id: str) -> None:
        """Send a delivery again now (a new round of tries, same webhook-id, freshly signed)."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(k.delivery(delivery_id), mapping={"status": "pending", "tries": 0, "trigger": "replay",
                                                    "next_at": int(time.time() * 1000)})  # fmt: skip
        pipe.hincrby(k.delivery(delivery_id), "replays", 1)
        pipe.zadd(k.due, {delivery_id: int(time.time() * 1000)})
        await pipe.execute()

    async def for_job(self, job_id: str) -> list[dict[str, Any]]:
        """The job's deliveries, oldest first, each with its tries."""
        ids = [_s(i) for i in await self.redis.lrange(self.keys.log(job_id), 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.delivery(i))
            pipe.lrange(self.keys.attempts(i), 0, -1)
        res = await pipe.execute() if ids else []
        out = []
        for n in range(len(ids)):
            raw = {_s(a): _s(b) for a, b in res[2 * n].items()}
            if raw:
                out.append(view(raw, [json.loads(_s(a)) for a in res[2 * n + 1]]))
        return out

    async def pending(self) -> int:
        return int(await self.redis.zcard(self.keys.due))


def _ms(value: str | None) -> float | None:
    return int(value) / 1000 if value else None


def view(raw: dict[str, str], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """A delivery as the API shows it."""
    return {
        "delivery_id": raw["id"],
        "job_id": raw.get("job_id"),
        "event": raw.get("event"),
        "url": raw.get("url"),
        "status": raw.get("status"),
        "attempts": attempts,
        "replays": int(raw.get("replays") or 0),
        "created_at": _ms(raw.get("created_at")),
        "next_attempt_at": _ms(raw.get("next_at")) if raw.get("status") == "pending" else None,
        "payload": json.loads(raw["payload"]) if raw.get("payload") else None,
    }
