"""Opening Redis clients: explicit connect and reply timeouts, bounded retries with jitter, and one place that
says which errors mean "Redis is down or restarting" (answered 503 + Retry-After by the API, backed off by workers).
"""

from __future__ import annotations

import random

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError, TimeoutError

from comfyflow.settings import Settings

#: Errors that mean Redis cannot answer right now (stopped, restarting, loading its AOF, partitioned).
REDIS_DOWN: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, BusyLoadingError)


def open_redis(settings: Settings, url: str) -> Redis:
    """One client per process with explicit timeouts, so no call waits on a dead Redis past its bound."""
    return Redis.from_url(
        url,
        health_check_interval=30,
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
        retry_on_error=[ConnectionError, TimeoutError],
    )


def is_redis_down(exc: BaseException) -> bool:
    return isinstance(exc, REDIS_DOWN)


def is_nogroup(exc: BaseException) -> bool:
    """Redis lost the queue's consumer group (restarted without persistence, then a submit recreated the stream)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


class Backoff:
    """Exponential backoff with full jitter for loops that wait on a dependency (reset on success)."""

    def __init__(self, base: float = 0.2, cap: float = 5.0, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.failures = base, cap, 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        self.failures += 1
        return self.rng.uniform(self.base / 2, min(self.cap, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0
