"""The backend pool: every ComfyUI server comfyflow may render on, with capacity, labels and health, shared in Redis.

Backends come from settings (``COMFYFLOW_BACKENDS``; an entry may carry ``#slots=4&labels=vram-24gb,sdxl``) and
from registrations at run time (``POST /admin/backends``), kept in Redis so every process sees them. Each has a
capacity (GPU slots), labels (free-form, plus the models and node classes its ``capabilities()`` report) and a
health that one leader at a time probes (``Backend.health``: ``/system_stats`` + ``/prompt``) with hysteresis:
``COMFYFLOW_BACKEND_DOWN_AFTER`` failures in a row mark it down, ``COMFYFLOW_BACKEND_UP_AFTER`` passes bring it
back. Jobs that see a backend fail count as failed probes; a fatal device error quarantines it until it passes
health checks again. Routing (``core/steps.py``) sends a job only to healthy backends able to run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis

from comfyflow.core.backend_state import (
    BackendSpec,
    BackendState,
    Health,
    PoolView,
    Requirement,
    backend_id,
    check_labels,
    is_device_error,
    parse_backend,
    requirement_for,
)
from comfyflow.core.keys import Keys
from comfyflow.core.slots import SlotPool
from comfyflow.errors import BackendUnavailable, ComfyflowError, ConfigError
from comfyflow.plugins.protocols import Backend, BackendHealth, PromptPhase
from comfyflow.settings import Settings

log = structlog.get_logger("comfyflow.pool")
T = TypeVar("T")

#: How long a process trusts its copy of the pool before checking the version counter again.
VIEW_TTL = 0.25
#: How often a render checks whether its backend is still in the pool.
DRAIN_CHECK = 0.5


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _f(value: Any) -> float | None:
    try:
        return float(_s(value)) if value not in (None, b"", "") else None
    except ValueError:
        return None


_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class BackendPool:
    """The pool as one process uses it: a cached view, lazily built Backend objects, probing when leader."""

    def __init__(
        self, redis: Redis, keys: Keys, settings: Settings, factory: Callable[[str], Backend], *,
        slots: SlotPool | None = None, prebuilt: Mapping[str, Backend] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.prefix = keys.prefix
        self.settings = settings
        self.factory = factory
        self.slots = slots
        self.clock = clock
        entries = list(prebuilt) if prebuilt else settings.backends
        self.configured = [parse_backend(e, settings.backend_slots) for e in entries]
        self._built: dict[str, Backend] = dict(prebuilt or {})
        self._view = PoolView({s.url: BackendState(s) for s in self.configured})
        self._checked = 0.0
        self._reload_lock = asyncio.Lock()
        lua = (files("comfyflow.core") / "lua" / "pool_health.lua").read_text()
        self._observe_script = redis.register_script(lua)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._sync_slots()
        self.backends = BackendMap(self)

    # --- keys ------------------------------------------------------------------------------------------
    @property
    def registry_key(self) -> str:
        """Hash of url -> BackendSpec JSON: registrations at run time and overrides of configured backends."""
        return f"{self.prefix}:pool:registry"

    @property
    def version_key(self) -> str:
        """Counter bumped whenever a backend joins, leaves, changes health or capabilities."""
        return f"{self.prefix}:pool:version"

    @property
    def leader_key(self) -> str:
        return f"{self.prefix}:pool:leader"

    def state_key(self, url: str) -> str:
        return f"{self.prefix}:pool:state:{backend_id(url)}"

    def caps_key(self, url: str) -> str:
        return f"{self.prefix}:pool:caps:{backend_id(url)}"

    # --- the view ----------------------------------------------------------------------------------------
    async def view(self, *, fresh: bool = False) -> PoolView:
        """The pool, re-read from Redis when its version changed (checked at most every VIEW_TTL seconds)."""
        now = time.monotonic()
        if not fresh and now - self._checked < VIEW_TTL:
            return self._view
        version = int(await self.redis.get(self.version_key) or 0)
        if fresh or version != self._view.version or not self._checked:
            async with self._reload_lock:
                self._view = await self._load(version)
                self._sync_slots()
        self._checked = now
        return self._view

    def known(self) -> list[str]:
        """Backend URLs as of the last view (configured ones before the first)."""
        return list(self._view.backends)

    async def _load(self, version: int) -> PoolView:
        registry = {_s(k): BackendSpec.from_json(v) for k, v in (await self.redis.hgetall(self.registry_key)).items()}
        specs = {s.url: registry.pop(s.url, s) for s in self.configured}
        specs.update({s.url: s for s in sorted(registry.values(), key=lambda s: s.registered_at)})
        pipe = self.redis.pipeline(transaction=False)
        for url in specs:
            pipe.hgetall(self.state_key(url))
            pipe.hgetall(self.caps_key(url))
        raw = await pipe.execute()
        states: dict[str, BackendState] = {}
        for i, (url, spec) in enumerate(specs.items()):
            st = {_s(k): _s(v) for k, v in raw[2 * i].items()}
            caps = {_s(k): _s(v) for k, v in raw[2 * i + 1].items()}
            states[url] = BackendState(
                spec, Health(st.get("health", "unknown")), int(st.get("fails", 0)), int(st.get("oks", 0)),
                _f(st.get("checked_at")), _f(st.get("changed_at")), _f(st.get("latency_s")),
                int(st["queue_remaining"]) if st.get("queue_remaining", "").isdigit() else None,
                st.get("detail", ""), st.get("reason", ""),
                json.loads(caps["models"]) if caps.get("models") else None,
                frozenset(json.loads(caps["node_classes"])) if caps.get("node_classes") else None,
                _f(caps.get("at")),
            )  # fmt: skip
        names = frozenset(n for s in states.values() for ns in (s.models or {}).values() for n in ns)
        return PoolView(states, version, names)

    def _sync_slots(self) -> None:
        if self.slots is not None:
            self.slots.capacities = {url: s.spec.capacity for url, s in self._view.backends.items()}

    async def _bump(self) -> None:
        await self.redis.incr(self.version_key)
        self._checked = 0.0

    # --- registrations -----------------------------------------------------------------------------------
    async def register(self, url: str, *, capacity: int | None = None, labels: list[str] | None = None) -> BackendSpec:
        """Add a backend (or change one, or enable a disabled one). Every process sees it within VIEW_TTL."""
        url = url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or parts.query:
            raise ConfigError(f"{url!r} is not a ComfyUI base URL; expected e.g. http://10.0.0.5:8188")
        current = (await self.view(fresh=True)).get(url)
        base = current.spec if current else None
        spec = BackendSpec(
            url,
            capacity or (base.capacity if base else self.settings.backend_slots),
            check_labels(labels) if labels is not None else (base.labels if base else ()),
            base.source if base else "runtime",
            True,
            base.registered_at if base and base.registered_at else self.clock(),
        )
        await self.redis.hset(self.registry_key, url, spec.to_json())
        await self._bump()
        return spec

    async def remove(self, url: str) -> str:
        """Take a backend out of the pool: a registered one is forgotten, a configured one disabled (it stays
        listed, and ``register`` enables it again). Renders waiting in its queue move to other backends.

        Returns "removed", "disabled" or "missing".
        """
        state = (await self.view(fresh=True)).get(url)
        if state is None:
            return "missing"
        if state.spec.source == "runtime":
            await self.redis.hdel(self.registry_key, url)
            await self.redis.delete(self.state_key(url), self.caps_key(url))
            outcome = "removed"
        else:
            await self.redis.hset(self.registry_key, url, replace(state.spec, enabled=False).to_json())
            outcome = "disabled"
        await self._bump()
        return outcome

    # --- backends ----------------------------------------------------------------------------------------
    def backend(self, url: str) -> Backend:
        """The Backend object for ``url``, built on first use (so registrations made elsewhere just work)."""
        backend = self._built.get(url)
        if backend is None:
            backend = self._built[url] = self.factory(url)
        return backend

    async def aclose(self) -> None:
        for backend in list(self._built.values()):
            with contextlib.suppress(Exception):
                await backend.aclose()
        self._built.clear()

    # --- health ------------------------------------------------------------------------------------------
    async def _observe(self, url: str, kind: str, health: BackendHealth | None = None, detail: str = "") -> Health:
        why = (health.detail if health else detail)[:500]
        latency = str(round(health.latency_s, 4)) if health else ""
        queue = str(health.queue_remaining) if health and health.queue_remaining is not None else ""
        s = self.settings
        args: list[str | int] = [
            kind,
            repr(self.clock()),
            s.backend_down_after,
            s.backend_up_after,
            url,
            latency,
            queue,
            why,
        ]
        res: Any = await self._observe_script(keys=[self.state_key(url), self.version_key], args=args)
        new, changed, old = Health(_s(res[0])), int(res[1]), _s(res[2])
        if changed:
            self._checked = 0.0
            level = log.info if new is Health.UP else log.warning
            level("backend health changed", backend=url, old=old, new=new.value, why=why[:200])
        return new

    async def probe(self, url: str) -> Health:
        """Probe one backend now, record the outcome (with hysteresis), and describe it when it comes up."""
        timeout = max(2.0, 2 * self.settings.backend_probe_seconds)
        backend = self.backend(url)
        try:
            result = await asyncio.wait_for(backend.health(), timeout)
        except TimeoutError:
            result = BackendHealth(False, timeout, None, f"no answer to the health probe within {timeout:g}s")
        health = await self._observe(url, "ok" if result.ok else "fail", result)
        state = self._view.get(url)
        stale = (
            state is None
            or state.described_at is None
            or (self.clock() - state.described_at > self.settings.object_info_ttl_seconds)
        )
        if health is Health.UP and (stale or state is None or state.health is not Health.UP):
            await self.describe(url)
        return health

    async def describe(self, url: str) -> None:
        """Store the backend's models and node classes in the pool (bumps the version when they changed)."""
        try:
            caps = await self.backend(url).capabilities(refresh=True)
        except BackendUnavailable as exc:
            log.warning("backend capabilities unavailable", backend=url, error=exc.message)
            return
        models = json.dumps(caps.models, sort_keys=True)
        classes = json.dumps(sorted(caps.node_classes))
        digest = hashlib.sha1((models + classes).encode()).hexdigest()
        key = self.caps_key(url)
        old = await self.redis.hget(key, "digest")
        await self.redis.hset(key, mapping={"models": models, "node_classes": classes, "at": repr(self.clock()),
                                            "digest": digest})  # fmt: skip
        if old is None or _s(old) != digest:
            await self._bump()

    async def probe_all(self) -> dict[str, Health]:
        view = await self.view(fresh=True)
        urls = [u for u, s in view.backends.items() if s.spec.enabled]
        results = await asyncio.gather(*(self.probe(u) for u in urls), return_exceptions=True)
        return {u: r for u, r in zip(urls, results, strict=True) if isinstance(r, Health)}

    async def report_failure(self, url: str, exc: BackendUnavailable) -> None:
        """A job could not talk to ``url`` (refused, 5xx, socket lost): counts as a failed probe."""
        if isinstance(exc.details, dict) and exc.details.get("request"):
            with contextlib.suppress(Exception):
                await self._observe(url, "passive", detail=exc.message)

    async def quarantine(self, url: str, reason: str) -> None:
        """Keep jobs off ``url`` until it passes ``COMFYFLOW_BACKEND_UP_AFTER`` health checks in a row."""
        await self._observe(url, "quarantine", detail=reason)

    async def run(self, stop: asyncio.Event, *, name: str) -> None:
        """Probe every backend each ``COMFYFLOW_BACKEND_PROBE_SECONDS`` while this process leads (a Redis lock
        with expiry, so another process takes over when this one dies)."""
        interval = self.settings.backend_probe_seconds
        ttl_ms = int(max(3 * interval, 2.0) * 1000)
        leading = False
        try:
            while not stop.is_set():
                try:
                    if leading:
                        leading = bool(await self._renew(keys=[self.leader_key], args=[name, ttl_ms]))
                    if not leading:
                        leading = bool(await self.redis.set(self.leader_key, name, nx=True, px=ttl_ms))
                    if leading:
                        await self.probe_all()
                except Exception as exc:  # Redis restarting: try again next round
                    log.warning("backend probing failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
        finally:
            if leading:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release(keys=[self.leader_key], args=[name]))

    # --- draining ----------------------------------------------------------------------------------------
    async def guard(self, url: str, prompt_id: str, render: Awaitable[T]) -> T:
        """Await a render; if its backend leaves the pool while the prompt still waits in that backend's queue,
        delete it there and raise BackendUnavailable (naming the backend), so the job is re-queued elsewhere.
        A prompt already running is left to finish."""
        task = asyncio.ensure_future(render)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DRAIN_CHECK)
                if done:
                    return task.result()
                view = await self.view()
                state = view.get(url)
                if state is not None and (state.usable or (state.last_resort and not any(
                    s.usable for u, s in view.backends.items() if u != url
                ))):  # fmt: skip
                    continue
                if await self._still_running(url, prompt_id):
                    continue
                why = "removed from the pool" if state is None else (
                    "disabled" if not state.spec.enabled else f"{state.health.value}: {state.reason}"
                )  # fmt: skip
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                with contextlib.suppress(Exception):
                    await self.backend(url).cancel(prompt_id)
                raise BackendUnavailable(
                    f"backend {url} left the pool ({why}) while prompt {prompt_id} waited in its queue; the job "
                    "moves to another backend",
                    details={"backend": url, "prompt_id": prompt_id, "moved": True},
                )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _still_running(self, url: str, prompt_id: str) -> bool:
        try:
            status = await self.backend(url).lookup(prompt_id)
        except ComfyflowError:
            return False
        return status.phase in (PromptPhase.RUNNING, PromptPhase.SUCCEEDED)


class BackendMap(Mapping[str, Backend]):
    """``Runtime.backends``: the pool's backends by URL, built lazily. Iterates the backends of the last view;
    looks up any URL (a previous attempt's backend may have left the pool since)."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool

    def __getitem__(self, url: str) -> Backend:
        return self.pool.backend(url)

    def __contains__(self, url: object) -> bool:
        return url in self.pool.known()

    def __iter__(self) -> Iterator[str]:
        return iter(self.pool.known())

    def __len__(self) -> int:
        return len(self.pool.known())


__all__ = [
    "BackendMap",
    "BackendPool",
    "BackendSpec",
    "BackendState",
    "Health",
    "PoolView",
    "Requirement",
    "backend_id",
    "is_device_error",
    "parse_backend",
    "requirement_for",
]
