"""Throttling before authentication, per client address (``COMFYFLOW_THROTTLE__...``).

Two counters per address, each a fixed one-minute window in Redis (so the limits hold across API processes):

- **refused credentials**: each request whose credentials are refused counts. Above the limit the caller gets 429
  with ``Retry-After`` instead of 401, and this process refuses the address at once for the rest of the window,
  before any key lookup (another process learns of it at the address's next refused credential there).
- **requests without credentials** (the public probes, and protected routes called without credentials): each
  counts; above the limit, 429 before anything else is done.

A valid key costs nothing here. The counters fail open: when Redis does not answer, the request goes on (and
/health can still say that Redis is down). With auth off (``COMFYFLOW_AUTH=none``, loopback only) nothing is
throttled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

import structlog
from sanic import Request

from comfyflow.errors import RateLimited
from comfyflow.settings import Settings

log = structlog.get_logger("comfyflow.throttle")
WINDOW_SECONDS = 60
# KEYS: counter   ARGV: window seconds. Returns {count in this window, seconds until it resets}.
HIT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""
MAX_BLOCKED = 10_000


class Throttle:
    """The per-address counters of one API process."""

    def __init__(self, settings: Settings, redis: Any, *, public: set[str], exempt_prefix: str) -> None:
        self.cfg = settings.throttle
        self.enabled = bool(settings.auth_plugins)
        self.prefix = f"{settings.key_prefix}:throttle"
        self.public = public
        self.exempt_prefix = exempt_prefix  # signed artifact links carry their own signature
        self._hit = redis.register_script(HIT)
        self._blocked: dict[str, float] = {}  # address -> monotonic time this process refuses it until

    def address(self, request: Request) -> str:
        """The client's address (behind ``proxies_count`` proxies, from X-Forwarded-For); IPv6 per network."""
        raw = request.remote_addr or request.ip or "unknown"
        try:
            ip = ipaddress.ip_address(raw.strip("[]"))
        except ValueError:
            return raw[:64]
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/{self.cfg.ipv6_prefix}", strict=False))
        return str(ip)

    async def _count(self, kind: str, address: str) -> tuple[int, int] | None:
        try:
            n, ttl = await asyncio.wait_for(
                self._hit(keys=[f"{self.prefix}:{kind}:{address}"], args=[WINDOW_SECONDS]), timeout=1.0
            )
        except Exception as exc:  # fail open: a throttle must not take the API down with Redis
            log.warning("throttle counter unavailable", error=f"{type(exc).__name__}: {exc}")
            return None
        return int(n), max(1, int(ttl))

    async def before_auth(self, request: Request) -> None:
        """Refuse an address over its limits before any credential is looked at."""
        path = request.path
        if not self.enabled or request.method == "OPTIONS" or path.startswith(self.exempt_prefix):
            return
        if path in self.public or "authorization" not in request.headers:
            address = request.ctx.client_address = self.address(request)
            limit = self.cfg.anonymous_per_minute
            counted = await self._count("anon", address) if limit else None
            if counted is not None and counted[0] > limit:
                raise _refusal(f"More than {limit} requests without credentials per minute from your address",
                               limit, counted[1])  # fmt: skip
            return
        if not self._blocked:  # the common case: no address refused (``failed`` works the address out itself)
            return
        address = request.ctx.client_address = self.address(request)
        until = self._blocked.get(address)
        if until is not None:
            left = until - time.monotonic()
            if left > 0:
                raise _refusal(self._failure_text(), self.cfg.auth_failures_per_minute, left)
            del self._blocked[address]

    async def failed(self, request: Request) -> None:
        """Count refused credentials; raises RateLimited (429) once the address is over its limit."""
        limit = self.cfg.auth_failures_per_minute
        if not self.enabled or not limit:
            return
        address = getattr(request.ctx, "client_address", None) or self.address(request)
        counted = await self._count("fail", address)
        if counted is None:
            return
        n, ttl = counted
        if n >= limit:
            if len(self._blocked) >= MAX_BLOCKED:
                now = time.monotonic()
                self._blocked = {a: t for a, t in self._blocked.items() if t > now}
            self._blocked[address] = time.monotonic() + ttl
            log.warning("client address throttled", address=address, failures=n, seconds=ttl)
        if n > limit:
            raise _refusal(self._failure_text(), limit, ttl)

    def _failure_text(self) -> str:
        return f"More than {self.cfg.auth_failures_per_minute} refused credentials per minute from your address"


def _refusal(text: str, limit: int, seconds: float) -> RateLimited:
    return RateLimited(
        f"{text}; retry in {max(1, round(seconds))} s.",
        retry_after=seconds,
        details={"limit": limit, "window_seconds": WINDOW_SECONDS, "scope": "client address"},
    )
