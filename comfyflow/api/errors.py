"""One error envelope for every error, framework ones included: {"error": {code, message, details, ...}}."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pydantic
import structlog
from sanic import Request
from sanic import exceptions as sx
from sanic.response import HTTPResponse, json

from comfyflow import errors as e
from comfyflow.api.http import BadBody, TooLarge, UnsupportedMediaType
from comfyflow.core.redis_conn import is_redis_down

log = structlog.get_logger("comfyflow.api")

#: Seconds a client should wait before retrying while Redis is down (a restart with AOF takes a few seconds).
REDIS_RETRY_AFTER = 2

STATUS: list[tuple[type[e.ComfyflowError], int]] = [
    (BadBody, 400),
    (UnsupportedMediaType, 415),
    (TooLarge, 413),
    (e.IdempotencyInFlight, 409),
    (e.IdempotencyConflict, 422),
    (e.ValidationError, 422),
    (e.GraphInvalid, 422),
    (e.Unauthorized, 401),
    (e.Forbidden, 403),
    (e.NotFound, 404),
    (e.Gone, 410),
    (e.QuotaExceeded, 402),
    (e.RateLimited, 429),
    (e.Overloaded, 503),
    (e.BackendUnavailable, 503),
    (e.Conflict, 409),
]

SANIC_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    416: "RANGE_NOT_SATISFIABLE",
    503: "BACKEND_UNAVAILABLE",
}


def envelope(request: Request | None, status: int, code: str, message: str, details: Any = None,
             headers: dict[str, str] | None = None) -> HTTPResponse:  # fmt: skip
    rid = getattr(getattr(request, "ctx", None), "request_id", None) if request is not None else None
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": details if details is not None else {},
            "request_id": rid,
            "timestamp": datetime.now(UTC).isoformat(),
        }
    }
    return json(body, status=status, headers=headers)


def pydantic_details(
    exc: pydantic.ValidationError, *, tags: tuple[str, ...] = ("txt2img", "img2img", "workflow")
) -> list[dict[str, Any]]:
    """Each error with the offending field (dotted), its value and what to do."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in tags:
            loc = loc[1:]
        if loc and loc[0].startswith("function-after"):
            loc = loc[1:]
        value = err.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        if isinstance(value, str) and len(value) > 200:
            value = value[:200] + "..."
        if isinstance(value, dict | list):
            value = None  # do not echo whole objects back
        out.append({"field": ".".join(loc) or "body", "message": err["msg"], "type": err["type"], "value": value})
    return out


def validation_message(details: list[dict[str, Any]]) -> str:
    first = details[0] if details else {"field": "body", "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{first['field']}: {first['message']}{more}"


async def handle(request: Request, exc: Exception) -> HTTPResponse:
    """Map any exception to the envelope. Never a stack trace to the client."""
    if isinstance(exc, e.ComfyflowError):
        status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
        headers = {}
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        code = exc.code if status != 500 else "INTERNAL_ERROR"
        if status == 500:
            log.error("internal error", error=exc.message, path=request.path)
        return envelope(request, status, code, exc.message, exc.details, headers)
    if isinstance(exc, pydantic.ValidationError):
        details = pydantic_details(exc)
        return envelope(request, 422, "VALIDATION_ERROR", validation_message(details), details)
    if isinstance(exc, sx.SanicException):
        status = getattr(exc, "status_code", 500) or 500
        code = SANIC_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
        message = str(exc) or code.replace("_", " ").lower()
        if status == 404 and isinstance(exc, sx.NotFound):
            message = f"No route for {request.method} {request.path}; see /docs for the API."
        if status == 405:
            message = f"{request.method} is not allowed on {request.path}."
        if status == 413:
            message = "The request body is larger than allowed; send a smaller body."
        headers = dict(getattr(exc, "headers", None) or {})
        if status >= 500:
            log.error("server error", status=status, error=str(exc), path=request.path)
            message = "internal error" if status == 500 else message
        return envelope(request, status, code, message, getattr(exc, "extra", None) or {}, headers)
    if is_redis_down(exc):  # stopped, restarting or loading its data: come back shortly, never a 500
        log.warning("redis unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}")
        return envelope(
            request, 503, "BACKEND_UNAVAILABLE", "The job store (Redis) is not answering; retry shortly.",
            {"dependency": "redis"}, {"Retry-After": str(REDIS_RETRY_AFTER)},
        )  # fmt: skip
    log.exception("unhandled error", path=request.path, error=f"{type(exc).__name__}: {exc}")
    return envelope(request, 500, "INTERNAL_ERROR", "An unexpected error occurred; it was logged.")
