"""Adding this process's metric increments to the fleet's totals in Redis, and folding the job facts in.

Increments (HTTP requests, storage bytes, first-progress times...) are buffered in the process and added to the
``{prefix}:metrics`` hash within ``interval`` seconds, one pipeline-free script call per flush; the facts the
state scripts record atomically with each job transition (``core/lua/lib.lua: fact``) are folded into the same
hash by whichever process flushes first. A fold is a compare-and-set on the fact list's head, so two processes
folding at once never count a fact twice. A process killed with SIGKILL loses at most ``interval`` seconds of
its own buffered increments; job facts are never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from redis.asyncio import Redis

from comfyflow import metrics as m

log = structlog.get_logger("comfyflow.metrics")

FOLD_BATCH = 500

# KEYS: facts, totals   ARGV: n, first fact, last fact, field, delta, field, delta, ...
_APPLY = """
local n = tonumber(ARGV[1])
if n > 0 then
  if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[2] or redis.call('LINDEX', KEYS[1], n - 1) ~= ARGV[3] then
    return 0
  end
  redis.call('LTRIM', KEYS[1], n, -1)
end
for i = 4, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


def totals_key(prefix: str) -> str:
    return f"{prefix}:metrics"


def facts_key(prefix: str) -> str:
    return f"{prefix}:metrics:facts"


def _num(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, False, "") else None
    except (TypeError, ValueError):
        return None


def error_class(code: Any) -> str:
    """An error code as a label value: ``INVALID_GRAPH`` stays, ``lease expired`` becomes ``LEASE_EXPIRED``."""
    text = str(code or "").strip()
    return text.upper().replace(" ", "_")[:64] if text else "UNKNOWN"


def fact_increments(raw: str | bytes) -> dict[str, float]:
    """What one job fact adds to the totals (see the JSON layout in ``lib.lua``)."""
    try:
        f = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(f, list):
        return {}
    kind, detail, _id, _attempt, role, size, priority, created, rstart, rend, now, code = (f + [False] * 12)[:12]
    role = role if role in m.ROLES else "unknown"
    out: dict[str, float] = {}

    def add(spec: m.Spec, labels: tuple[str, ...], value: float = 1.0) -> None:
        for key, delta in m.increments(spec, labels, value).items():
            out[key] = out.get(key, 0.0) + delta

    if kind == "submit":
        add(m.JOBS_SUBMITTED, (role, priority if priority in m.PRIORITIES else "normal"))
    elif kind == "retry":
        add(m.JOB_RETRIES, (error_class(detail),))
    elif kind == "finish":
        state = str(detail)
        add(m.JOBS_FINISHED, (state, role, error_class(code) if state == "failed" else m.NO_ERROR))
        if state == "succeeded":
            size = size if size in m.SIZES else "unknown"
            c, rs, re_, n = _num(created), _num(rstart), _num(rend), _num(now)
            spans = {
                "queue_wait": (c, rs),
                "render": (rs, re_),
                "store": (re_, n),
                "total": (c, n),
            }
            for phase, (a, b) in spans.items():
                if a is not None and b is not None and b >= a:
                    add(m.JOB_DURATION, (phase, size), b - a)
    return out


class Recorder:
    """One per process and Redis prefix (``Runtime.metrics``). ``add`` never blocks and never raises."""

    def __init__(self, redis: Redis, prefix: str, *, interval: float = 1.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.interval = interval
        self._pending: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._apply = redis.register_script(_APPLY)

    def add(self, spec: m.Spec, *labels: str, value: float = 1.0) -> None:
        """Count (counter) or observe (histogram) ``value`` for the series ``labels``."""
        try:
            for key, delta in m.increments(spec, tuple(labels), value).items():
                self._pending[key] = self._pending.get(key, 0.0) + delta
        except ValueError as exc:
            log.warning("metric not recorded", error=str(exc))
            return
        self._schedule()

    def _schedule(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            self._task = asyncio.get_running_loop().create_task(self._later())
        except RuntimeError:  # no loop (a sync caller): the next flush takes it
            pass

    async def _later(self) -> None:
        await asyncio.sleep(self.interval)
        self._task = None  # increments added while flushing schedule the next flush
        try:
            await self.flush()
        except Exception as exc:  # Redis away: the increments stay buffered for the next flush
            log.warning("metrics flush failed", error=str(exc))
            self._schedule()

    async def flush(self) -> None:
        """Add the buffered increments and fold every recorded job fact into the totals, now."""
        async with self._lock:
            pending, self._pending = self._pending, {}
            try:
                for _ in range(1000):
                    facts = await self.redis.lrange(facts_key(self.prefix), 0, FOLD_BATCH - 1)
                    incs = dict(pending)
                    for raw in facts:
                        for key, delta in fact_increments(raw).items():
                            incs[key] = incs.get(key, 0.0) + delta
                    if not facts and not incs:
                        return
                    args: list[Any] = [len(facts), facts[0] if facts else "", facts[-1] if facts else ""]
                    for key, delta in incs.items():
                        args += [key, repr(delta)]
                    if await self._apply(keys=[facts_key(self.prefix), totals_key(self.prefix)], args=args):
                        pending = {}
                        if len(facts) < FOLD_BATCH:
                            return
                    # else another process folded these facts first: read the list again
            except BaseException:
                for key, delta in pending.items():
                    self._pending[key] = self._pending.get(key, 0.0) + delta
                raise

    async def totals(self) -> dict[str, float]:
        """The fleet's totals as stored (after a flush)."""
        raw = await self.redis.hgetall(totals_key(self.prefix))
        out = {}
        for k, v in raw.items():
            with contextlib.suppress(ValueError):
                out[k.decode() if isinstance(k, bytes) else k] = float(v)
        return out

    async def aclose(self) -> None:
        """Flush what is buffered (best effort) and stop the timer."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
