"""The composition root: embedded services, the runtime, the workers and (optionally) Prefect, wired together.

The flows package is loaded here by name, so no module of the comfyflow package depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

import structlog

from comfyflow.core.runtime import Runtime
from comfyflow.core.worker import Runner, Worker
from comfyflow.embedded import ServiceURLs, ensure_services, sessions
from comfyflow.settings import Settings

log = structlog.get_logger("comfyflow.service")


@contextlib.asynccontextmanager
async def prefect_settings(api_url: str | None) -> AsyncIterator[None]:
    """Point Prefect's client at our server for everything run inside (never its ephemeral mode)."""
    if api_url is None:
        yield
        return
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    with temporary_settings(
        updates={
            PREFECT_API_URL: api_url,
            PREFECT_SERVER_EPHEMERAL_ENABLED: False,
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
        }
    ):
        yield


@contextlib.asynccontextmanager
async def services_session(settings: Settings) -> AsyncIterator[ServiceURLs]:
    """Start (or find) the services; on exit the last process using the home's embedded ones stops them,
    unless they are kept (``comfyflow services start``, ``--keep-services``): see comfyflow/embedded/sessions.py."""
    if not sessions.uses_embedded(settings):
        yield await ensure_services(settings)
        return
    home = settings.resolved_home
    token = await asyncio.to_thread(sessions.join, home)
    try:
        yield await ensure_services(settings)
    finally:
        await asyncio.shield(asyncio.to_thread(sessions.leave, home, token))


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, **overrides: Any) -> AsyncIterator[tuple[Runtime, ServiceURLs]]:
    """Open a runtime on the configured (or embedded) services; the embedded ones stop with the last user."""
    async with services_session(settings) as urls:
        rt = await Runtime.open(settings, urls.redis_url, **overrides)
        try:
            yield rt, urls
        finally:
            await rt.aclose()


@contextlib.asynccontextmanager
async def runner_for(rt: Runtime, urls: ServiceURLs, stop: asyncio.Event) -> AsyncIterator[Runner | None]:
    """The Prefect executor (with its UI watcher) when Prefect is enabled, else None (plain steps)."""
    if not urls.prefect_api_url:
        yield None
        return
    # Importing Prefect takes seconds: in a thread, so that the event loop (the API of `comfyflow serve`) answers.
    executor_mod = await asyncio.to_thread(importlib.import_module, "flows.executor")
    async with prefect_settings(urls.prefect_api_url), executor_mod.PrefectExecutor() as executor:
        watcher = asyncio.create_task(executor_mod.watch_ui(executor, rt.store, stop))
        try:
            yield executor
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            await _drain_prefect_clients()


async def _drain_prefect_clients() -> None:
    """Send the run logs and events Prefect still holds while its server runs: the embedded one may stop right
    after, and at interpreter exit Prefect would retry them against a stopped server for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            await service.drain_all(timeout=10)  # type: ignore[misc]


async def run_plane(rt: Runtime, urls: ServiceURLs, stop: asyncio.Event) -> None:
    """Batch watchers and pipeline runners (comfyflow/core/pipelines/plane.py) until ``stop`` is set: each a
    Prefect flow run when Prefect is enabled (flows/pipelines.py), plain coroutines otherwise."""
    while not stop.is_set():
        try:
            if urls.prefect_api_url:
                await importlib.import_module("flows.pipelines").run_plane(rt, stop)
            else:
                from comfyflow.core.pipelines.execution import plain_plane

                await plain_plane(rt).run(stop)
        except Exception as exc:  # e.g. Prefect down at start: the job workers go on; try again shortly
            log.error("run plane failed; restarting it in 5 s", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=5)


async def worker_loop(
    rt: Runtime, urls: ServiceURLs, stop: asyncio.Event, *, concurrency: int | None = None, grace: float = 30.0
) -> None:
    """Run a Worker on an open runtime until ``stop`` is set (used by run_worker and by comfyflow serve)."""
    async with runner_for(rt, urls, stop) as runner:
        kwargs: dict[str, Any] = {"concurrency": concurrency}
        if runner is not None:
            kwargs["runner"] = runner
        async with prefect_settings(urls.prefect_api_url):
            worker = Worker(rt, **kwargs)
            prober = asyncio.create_task(rt.pool.run(stop, name=worker.name))  # one process at a time probes
            plane = asyncio.create_task(run_plane(rt, urls, stop))
            try:
                await worker.run(stop, grace=grace)
            finally:
                prober.cancel()
                with contextlib.suppress(BaseException):
                    await prober
                stop.set()
                with contextlib.suppress(BaseException):
                    await plane


async def run_worker(
    settings: Settings, stop: asyncio.Event, *, concurrency: int | None = None, **overrides: Any
) -> None:
    """Run one worker process until ``stop`` is set (SIGTERM): claims, renders, stores."""
    async with open_runtime(settings, **overrides) as (rt, urls):
        await worker_loop(rt, urls, stop, concurrency=concurrency)
