"""The Sanic app factory. One blueprint per resource; the runtime is opened once per server process."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from typing import Any

import orjson
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from comfyflow.api import (
    access,
    admin,
    backends,
    batch_grid,
    batches,
    console,
    errors,
    events,
    files,
    jobs,
    metrics,
    ops,
    pipelines,
    webhooks,
)
from comfyflow.api.auth_policy import AuthPolicy, check_auth_settings
from comfyflow.api.docs import bp as docs_bp
from comfyflow.api.health import HealthMonitor
from comfyflow.api.http import add_headers, assign_request_id
from comfyflow.api.policy import OpenPolicy
from comfyflow.api.throttle import Throttle
from comfyflow.core.batches import BatchStore
from comfyflow.core.links import Links
from comfyflow.core.pipelines import PipelineRunStore
from comfyflow.core.runtime import Runtime
from comfyflow.core.sheets import ContactSheets
from comfyflow.core.submission import Submitter
from comfyflow.errors import Unauthorized
from comfyflow.settings import Settings, load_settings

#: Routes that answer without credentials. Artifact links carry their own signature instead.
PUBLIC = {"/health", "/healthz", "/readyz", "/ping", "/docs", "/docs/redoc.standalone.js", "/openapi.json"}
SIGNED_PREFIX = "/api/v1/artifacts/"
_names = itertools.count()


def dumps(obj: Any, **kwargs: Any) -> bytes:
    """JSON bodies with orjson (several times faster than the standard library on our responses); the standard
    library for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(obj, **kwargs).encode()


def create_app(
    settings: Settings | None = None,
    *,
    policy: Any = None,
    run_worker: bool = False,
    worker_concurrency: int | None = None,
    services: Any = None,
    **runtime_overrides: Any,
) -> Sanic:
    """Build the API app. ``run_worker`` also runs job workers inside the server process (comfyflow serve).

    The embedded services the app uses are stopped when it stops, unless another process still uses them or
    they are kept (comfyflow/embedded/sessions.py). ``services``: an ``EarlyStart`` already starting them (serve
    starts them before importing the app, so that both overlap)."""
    settings = settings or load_settings()
    app = Sanic(f"comfyflow_{next(_names)}", strict_slashes=False, dumps=dumps)
    app.config.REQUEST_MAX_SIZE = max(settings.max_body_bytes, settings.max_upload_bytes) + 64 * 1024
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.AUTO_EXTEND = False  # our own OpenAPI document and docs page; no sanic-ext auto routes
    app.config.OAS = False
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.WEBSOCKET_PING_INTERVAL = 20
    app.config.REQUEST_TIMEOUT = 60
    app.config.RESPONSE_TIMEOUT = max(600, int(settings.sync_timeout_seconds) + 30)
    app.config.NOISY_EXCEPTIONS = False
    app.ctx.settings = settings
    if settings.throttle.proxies_count:
        app.config.PROXIES_COUNT = settings.throttle.proxies_count  # client address from X-Forwarded-For
    if policy is None:
        check_auth_settings(settings)  # fail at start: unknown plugin, or auth off on a public address
    # With auth on, the AuthPolicy is built once Redis is open (_open).
    app.ctx.policy = policy or (None if settings.auth_plugins else OpenPolicy())
    app.ctx.prefect_api_url = settings.prefect_api_url

    for bp in (jobs.bp, events.bp, files.bp, ops.bp, docs_bp):
        app.blueprint(bp)
    app.blueprint(admin.bp)
    app.blueprint(batches.bp)  # /api/v1/batches
    app.blueprint(batch_grid.bp)  # /api/v1/batches/{id}/grid (contact sheet)
    app.blueprint(console.bp)  # /ui: the web console (static files; the script calls the API with a key)
    app.blueprint(pipelines.bp)  # /api/v1/pipelines, /api/v1/pipeline-runs
    app.blueprint(metrics.bp)  # /metrics: INTERNAL keys or the metrics token; the fleet's numbers
    app.blueprint(webhooks.bp)
    app.blueprint(backends.bp)  # /api/v1/backends and /api/v1/admin/backends (INTERNAL)
    app.error_handler.add(Exception, errors.handle)
    # One request and one response middleware run every per-request step (see _before and _after).
    app.on_request(_before_cors if settings.cors_origins else _before)
    app.on_response(_after_cors if settings.cors_origins else _after)
    access.install(app)

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        from comfyflow.embedded import ensure_services, sessions

        app.ctx.session = None
        if services is not None:
            app.ctx.session = services.token
        elif sessions.uses_embedded(settings):
            app.ctx.session = await asyncio.to_thread(sessions.join, settings.resolved_home)
        try:
            urls = await (asyncio.wrap_future(services.future) if services is not None else ensure_services(settings))
        except BaseException:
            if app.ctx.session is not None:  # stop what was started before the failure
                await asyncio.to_thread(sessions.leave, settings.resolved_home, app.ctx.session)
                app.ctx.session = None
            raise
        app.ctx.prefect_api_url = urls.prefect_api_url
        app.ctx.urls = urls
        app.ctx.rt = await Runtime.open(settings, urls.redis_url, hot_line=True, **runtime_overrides)
        if app.ctx.policy is None:
            app.ctx.policy = AuthPolicy.from_runtime(app.ctx.rt)
        app.ctx.throttle = Throttle(settings, app.ctx.rt.redis, public=PUBLIC, exempt_prefix=SIGNED_PREFIX)
        app.ctx.links = Links(settings, app.ctx.rt.storage)
        app.ctx.submitter = Submitter(app.ctx.rt)
        app.ctx.batches = BatchStore(app.ctx.rt.store)
        app.ctx.sheets = ContactSheets(app.ctx.batches, app.ctx.rt.storage)
        app.ctx.pipeline_runs = PipelineRunStore(app.ctx.rt.store)
        app.ctx.health = HealthMonitor(app.ctx.rt, urls.prefect_api_url)
        app.ctx.health.start()  # anonymous probes read its state; none of them checks anything itself
        app.ctx.stop = asyncio.Event()
        app.ctx.worker_task = None
        if run_worker and first_process():  # with several API processes, job workers run in the first only
            from comfyflow.service import worker_loop

            app.ctx.worker_task = asyncio.create_task(
                worker_loop(app.ctx.rt, urls, app.ctx.stop, concurrency=worker_concurrency)
            )

    @app.before_server_stop
    async def _stop(app: Sanic) -> None:
        app.ctx.stop.set()
        await app.ctx.health.aclose()
        if app.ctx.worker_task is not None:
            await app.ctx.worker_task

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        await app.ctx.rt.aclose()
        if app.ctx.session is not None:
            from comfyflow.embedded import sessions

            await asyncio.to_thread(sessions.leave, settings.resolved_home, app.ctx.session)
            app.ctx.session = None

    return app


def first_process() -> bool:
    """Whether this is the only API process, or the first of several (Sanic names its workers ...-0-0, ...-1-0;
    ``comfyflow serve --api-processes N``, comfyflow/api/serving.py)."""
    name = os.environ.get("SANIC_WORKER_NAME")
    return name is None or name.endswith("-0-0")


async def _before(request: Request) -> None:
    """Every request's steps before its handler, in this order, as one middleware (each middleware costs Sanic
    a call and a coroutine, and these run on every request): the start time (metrics), the request id, the log
    context, the per-address throttle (before any credential is looked at), authentication, the principal in the
    log context."""
    request.ctx.started = time.perf_counter()
    assign_request_id(request)
    access.bind_request(request)
    await _guard(request)


async def _before_cors(request: Request) -> HTTPResponse | None:
    """``_before`` with a CORS preflight answered after the log context is bound, before the throttle."""
    request.ctx.started = time.perf_counter()
    assign_request_id(request)
    access.bind_request(request)
    if (preflight := _cors_preflight(request)) is not None:
        return preflight
    await _guard(request)
    return None


async def _guard(request: Request) -> None:
    throttle = getattr(request.app.ctx, "throttle", None)
    if throttle is not None:
        await throttle.before_auth(request)
    await _authenticate(request)
    access.bind_principal(request)


async def _after(request: Request, response: HTTPResponse) -> None:
    """Every response's steps, as one middleware: the request metrics, the access log line, the version and
    request id headers (and those a step before asked for, e.g. X-RateLimit-*)."""
    metrics.count(request, response)
    access.access_line(request, response)
    add_headers(request, response)


async def _after_cors(request: Request, response: HTTPResponse) -> None:
    await _after(request, response)
    _cors_headers(request, response)


async def _authenticate(request: Request) -> None:
    path = request.path
    if path in PUBLIC or path in console.PUBLIC_PATHS or path.startswith(SIGNED_PREFIX) or request.method == "OPTIONS":
        return
    if metrics.has_metrics_token(request):
        request.ctx.metrics_token = True
        return
    try:
        request.ctx.principal = await request.app.ctx.policy.authenticate(request)
    except Unauthorized:
        await request.app.ctx.throttle.failed(request)  # 429 once the address is over its limit
        raise


def _cors_preflight(request: Request) -> HTTPResponse | None:
    if request.method == "OPTIONS" and request.headers.get("origin") in request.app.ctx.settings.cors_origins:
        return HTTPResponse(status=204)
    return None


def _cors_headers(request: Request, response: HTTPResponse) -> None:
    origin = request.headers.get("origin")
    if origin and origin in request.app.ctx.settings.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Expose-Headers"] = (
            "X-Request-ID, Location, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"
        )
