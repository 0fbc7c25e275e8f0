"""Per-owner request rate limits: an atomic sliding-window log in Redis (``lua/ratelimit.lua``).

Exact, not approximate: at most ``limit`` requests are let through in any window, however many arrive at once,
and on every API host (the window runs on the Redis server's clock).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis

from comfyflow.core.hotline import HotLine
from comfyflow.core.keys import Keys


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the oldest counted request leaves the window (one more request is allowed then).
    reset_seconds: float

    def headers(self) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers (Reset in whole seconds from now)."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(max(0, math.ceil(self.reset_seconds))),
        }


class RateLimiter:
    """Counts requests per owner; open once per process (it registers its script on the client)."""

    def __init__(
        self, redis: Redis, keys: Keys, *, window_seconds: float = 60.0, hot: HotLine | None = None
    ) -> None:
        self.keys = keys
        self.window_ms = int(window_seconds * 1000)
        self._script = redis.register_script((files("comfyflow.core") / "lua" / "ratelimit.lua").read_text())
        self.hot = hot  # the API's thin connection (core/hotline.py), when it has one

    async def _run(self, keys: list[str], args: list[str]) -> Any:
        if self.hot is not None:
            return await self.hot.script(self._script.sha, self._script.script, keys, args)
        return await self._script(keys=keys, args=args)

    async def hit(self, owner: str, limit: int, *, now: float | None = None) -> Decision:
        """Count one request of ``owner`` against ``limit`` per window, unless it is over the limit.

        Args:
            now: the time in seconds (tests); None = the Redis server's clock.
        """
        args = ["" if now is None else str(int(now * 1000)), str(limit), str(self.window_ms), os.urandom(8).hex()]
        return self.decision(await self._run([self.keys.ratelimit(owner)], args), limit)

    async def hit_and_read(self, owner: str, limit: int, key: str) -> tuple[Decision, dict[str, str]]:
        """Count one request and read the hash at ``key`` in the same script (one round trip)."""
        args = ["", str(limit), str(self.window_ms), os.urandom(8).hex()]
        reply = await self._run([self.keys.ratelimit(owner), key], args)
        flat = reply[3] or []
        if flat and isinstance(flat[0], str):  # the hot line's replies are strings already
            return self.decision(reply[:3], limit), dict(zip(flat[::2], flat[1::2], strict=True))
        return self.decision(reply[:3], limit), {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}

    @staticmethod
    def decision(reply: Any, limit: int) -> Decision:
        allowed, remaining, reset_ms = reply[:3]
        return Decision(bool(int(allowed)), limit, int(remaining), int(reset_ms) / 1000)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
