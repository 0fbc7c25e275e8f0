"""Request context for the logs, and one access log line per request.

``request_id`` is bound for every line logged while the request is handled, and ``principal`` (the caller's
id, never a credential) once authentication has run. The path is logged without its query string, which can
carry link signatures. With JSON logs, the access line of a request that did not fail is written without
structlog's processor chain (``logs.write_json``): the same fields, for a fraction of the cost.
"""

from __future__ import annotations

import logging
import time

import structlog
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from comfyflow import logs
from comfyflow.api.metrics import route_label

log = structlog.get_logger("comfyflow.api")
QUIET_ROUTES = ("/metrics", "/healthz", "/readyz", "/ping", "/health")


def bind_request(request: Request) -> None:
    structlog.contextvars.clear_contextvars()  # keep-alive connections handle requests one after another
    structlog.contextvars.bind_contextvars(request_id=request.ctx.request_id)


def bind_principal(request: Request) -> None:
    principal = getattr(request.ctx, "principal", None)
    if principal is not None:
        structlog.contextvars.bind_contextvars(principal=principal.id)


def access_line(request: Request, response: HTTPResponse) -> None:
    started = getattr(request.ctx, "started", None)
    route = route_label(request)
    fields = {
        "method": request.method,
        "path": request.path,
        "route": route,
        "status": response.status,
        "duration_s": round(time.perf_counter() - started, 4) if started is not None else None,
        "request_id": getattr(request.ctx, "request_id", None),
    }
    if response.status < 500 and route not in QUIET_ROUTES:
        principal = getattr(request.ctx, "principal", None)
        if principal is not None:
            fields["principal"] = principal.id
        # JSON: the cheap path. method, route and status are fixed vocabulary, principal an id
        if logs.write_json("comfyflow.api", logging.INFO, "request", fields, redacted=("path", "request_id")):
            return
    if response.status >= 500:
        log.warning("request", **fields)
    elif route in QUIET_ROUTES:
        log.debug("request", **fields)
    else:
        log.info("request", **fields)


def install(app: Sanic) -> None:
    """Route Sanic's loggers through comfyflow's handler. The per-request steps (``bind_request`` after the
    request id is assigned, ``bind_principal`` after authentication, ``access_line`` when the response starts) run
    in the app's one request and one response middleware (comfyflow/api/app.py)."""
    logs.route_framework_loggers()
