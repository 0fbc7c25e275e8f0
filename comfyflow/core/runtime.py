"""The clients one process shares: Redis, the job store, slots, backends, storage. Opened once, closed once."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from comfyflow.core.events import EventLog
from comfyflow.core.hotline import HotLine
from comfyflow.core.keys import Keys
from comfyflow.core.pool import BackendPool
from comfyflow.core.recorder import Recorder
from comfyflow.core.redis_conn import open_redis
from comfyflow.core.slots import SlotPool
from comfyflow.core.store import JobStore
from comfyflow.plugins import registry
from comfyflow.plugins.protocols import Backend, Storage
from comfyflow.settings import Settings


def make_backend(settings: Settings, url: str) -> Backend:
    factory = registry.load("backend", settings.backend_plugin)
    return factory(url, settings=settings)


def make_storage(settings: Settings) -> Storage:
    cls = registry.load("storage", settings.storage_plugin)
    return cls(
        settings.resolved_storage_url,
        options=settings.storage_options,
        public_endpoint=settings.storage_public_endpoint,
    )


@dataclass
class Runtime:
    """Everything a worker, a flow or the API needs, for one process."""

    settings: Settings
    redis: Redis
    store: JobStore
    events: EventLog
    slots: SlotPool
    backends: Mapping[str, Backend]
    storage: Storage
    staging: Path
    extras: dict[str, Any] = field(default_factory=dict)
    #: This process's metric increments, added to the fleet's totals in Redis (comfyflow/metrics.py).
    metrics: Recorder = field(default=None)  # type: ignore[assignment]
    #: The backends: configured and registered at run time, with health and capabilities (core/pool.py).
    pool: BackendPool = field(default=None)  # type: ignore[assignment]
    #: The thin pipelined connection of the API's hottest calls (core/hotline.py), when opened with ``hot_line``.
    hot: HotLine | None = None

    def __post_init__(self) -> None:
        if self.metrics is None:
            interval = self.settings.metrics_flush_seconds
            self.metrics = Recorder(self.redis, self.settings.key_prefix, interval=interval)

    @classmethod
    async def open(cls, settings: Settings, redis_url: str, *, hot_line: bool = False, **overrides: Any) -> Runtime:
        """Connect to Redis and build the plugins named in settings. ``overrides`` replace parts (tests).

        Args:
            hot_line: also open the thin connection for the API's hot paths (submit, job reads; core/hotline.py),
                unless ``overrides`` replace the Redis client (the hot line would bypass it).
        """
        hot = HotLine.open(settings, redis_url) if hot_line and "redis" not in overrides else None
        redis = overrides.pop("redis", None) or open_redis(settings, redis_url)
        keys = Keys(settings.key_prefix)
        store = JobStore(redis, settings, hot=hot)
        await store.ensure_groups()
        slots = SlotPool(
            redis, keys, {}, lease_seconds=settings.slot_lease_seconds,
            queue_seconds=settings.backend_queue_seconds, max_slots=settings.backend_max_slots,
        )  # fmt: skip
        pool = BackendPool(
            redis, keys, settings, lambda url: make_backend(settings, url), slots=slots,
            prebuilt=overrides.pop("backends", None),
        )  # fmt: skip
        storage = overrides.pop("storage", None) or make_storage(settings)
        staging = settings.resolved_home / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        return cls(
            settings, redis, store, EventLog(redis, keys), slots, pool.backends, storage, staging, pool=pool, hot=hot,
            **overrides,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self.pool.aclose()
        with contextlib.suppress(Exception):
            await self.storage.aclose()
        await self.metrics.aclose()
        if self.hot is not None:
            await self.hot.aclose()
        await self.redis.aclose()
