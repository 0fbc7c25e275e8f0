"""Operations: /health and /readyz (anonymous, from the cached health state), /health/details (INTERNAL),
/healthz (liveness), /ping."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow import __version__
from comfyflow.api.health import DOWN, UP, HealthMonitor, summary
from comfyflow.api.visibility import is_internal
from comfyflow.errors import Forbidden

bp = Blueprint("ops")
NOT_CHECKED = {"status": "unhealthy", "dependencies": {}, "reason": "no recent health check"}


def _monitor(request: Request) -> HealthMonitor:
    return request.app.ctx.health  # type: ignore[no-any-return]


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    """Each dependency by name: up, degraded or down; 200 only when all are up. Read from the state the
    background check keeps; the details are at /health/details (INTERNAL)."""
    monitor = _monitor(request)
    deps = await monitor.current()
    if deps is None:
        return json(NOT_CHECKED, status=503, headers={"Retry-After": "5"})
    status, plain = summary(deps)
    body = {"status": status, "dependencies": plain, "checked_at": monitor.checked_at_iso}
    return json(body, status=200 if status == "healthy" else 503)


@bp.get("/health/details")
async def health_details(request: Request) -> HTTPResponse:
    """The last check in full: URLs, latencies and error text of every dependency and backend (INTERNAL)."""
    if not is_internal(request):
        role = request.ctx.principal.role.value
        raise Forbidden(f"Health details are for INTERNAL callers; your role is {role}.", details={"role": role})
    monitor = _monitor(request)
    deps = await monitor.current()
    if deps is None:
        return json({**NOT_CHECKED, "version": __version__}, status=503)
    status, _ = summary(deps)
    body = {"status": status, "version": __version__, "checked_at": monitor.checked_at_iso, "dependencies": deps}
    return json(body, status=200 if status == "healthy" else 503)


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    """Liveness: the process answers."""
    return json({"status": "alive"})


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    """Readiness: Redis and storage answered the last check and the queue is under its admission limit;
    ``degraded`` while Redis has lost the queue's consumer group (after a restart without persistence) until the
    workers have made it again."""
    deps = await _monitor(request).current()
    if deps is None:
        return json({"status": "not_ready", "dependencies": {}}, status=503, headers={"Retry-After": "5"})
    plain = {name: UP if deps[name]["status"] == "ok" else DOWN for name in ("redis", "storage", "queue", "groups")}
    if DOWN in plain.values():
        status = "degraded" if [n for n, v in plain.items() if v == DOWN] == ["groups"] else "not_ready"
        body: dict[str, Any] = {"status": status, "dependencies": plain}
        if plain["groups"] == DOWN:
            body["reasons"] = [GROUPS_MISSING]
        return json(body, status=503, headers={"Retry-After": "5"})
    return json({"status": "ready", "dependencies": plain})


GROUPS_MISSING = "queue consumer group missing (Redis lost its data); workers recreate it within seconds"


@bp.get("/ping")
async def ping(request: Request) -> HTTPResponse:
    return json({"ok": True})
