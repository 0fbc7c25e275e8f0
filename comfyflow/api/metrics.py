"""``/metrics`` (Prometheus) and the HTTP request metrics.

``/metrics`` answers INTERNAL keys, or the separate ``COMFYFLOW_METRICS_TOKEN`` (a bearer token that opens
nothing else), and refuses other roles with 403: the numbers describe every tenant and every backend. Any API
process answers with the numbers of the whole fleet (API processes and workers alike; see
``comfyflow/metrics.py``), so Prometheus scrapes one target: the API's service address. Each request is counted
by route pattern (``/api/v1/jobs/<job_id:str>``, never the concrete path), method and status, with its latency
to the response headers; the counts are added to the fleet's totals in Redis within
``COMFYFLOW_METRICS_FLUSH_SECONDS``.
"""

from __future__ import annotations

import hmac
import time

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw

from comfyflow import metrics as m
from comfyflow.api.visibility import is_internal
from comfyflow.core import telemetry
from comfyflow.errors import Forbidden

bp = Blueprint("metrics")


@bp.get("/metrics")
async def scrape(request: Request) -> HTTPResponse:
    """The fleet's metrics in the Prometheus text format (INTERNAL keys or the metrics token)."""
    if not getattr(request.ctx, "metrics_token", False) and not is_internal(request):
        role = request.ctx.principal.role.value
        raise Forbidden(
            f"/metrics is for INTERNAL keys or the metrics token (COMFYFLOW_METRICS_TOKEN); your role is {role}.",
            details={"role": role},
        )
    body = await telemetry.scrape(request.app.ctx.rt)
    return raw(body, content_type=m.CONTENT_TYPE, headers={"Cache-Control": "no-store"})


def has_metrics_token(request: Request) -> bool:
    """Whether the request carries the configured metrics token (compared in constant time)."""
    token = request.app.ctx.settings.metrics_token
    if token is None or request.path != "/metrics":
        return False
    given = request.headers.get("authorization", "")
    expected = f"Bearer {token.get_secret_value()}"
    return hmac.compare_digest(given.encode(), expected.encode())


def route_label(request: Request) -> str:
    route = getattr(request, "route", None)
    if route is None:
        return "unmatched"
    return "/" + str(route.path).lstrip("/")


def count(request: Request, response: HTTPResponse) -> None:
    """Count the request by route, method and status, with its latency (from ``request.ctx.started``)."""
    rt = getattr(request.app.ctx, "rt", None)
    started = getattr(request.ctx, "started", None)
    if rt is None or started is None or getattr(request.ctx, "counted", False):
        return
    request.ctx.counted = True
    route, method = route_label(request), request.method
    rt.metrics.add(m.HTTP_REQUESTS, route, method, str(response.status))
    rt.metrics.add(m.HTTP_DURATION, route, method, value=time.perf_counter() - started)

