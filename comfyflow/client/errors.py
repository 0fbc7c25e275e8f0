"""Errors the API client raises: one class per HTTP status family, each carrying the API's error envelope::

try:
    client.submit(prompt="a fox", width=4096)
except ValidationFailed as exc:
    print(exc.code, exc.message, exc.details, exc.request_id)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from comfyflow.errors import ComfyflowError


class ClientError(ComfyflowError):
    """Base of every error the API client raises."""

    code = "CLIENT_ERROR"


class TransportError(ClientError):
    """Raised when the API cannot be reached, or the connection breaks before an answer arrives."""

    code = "TRANSPORT_ERROR"


class JobTimeout(ClientError, TimeoutError):
    """Raised by ``wait`` when the job is not finished within the timeout; the job keeps running."""

    code = "JOB_TIMEOUT"

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(
            f"Job {job_id} did not finish within {timeout:g}s; it keeps running. Wait again or cancel it.",
            details={"job_id": job_id, "timeout": timeout},
        )
        self.job_id = job_id


class ApiError(ClientError):
    """Raised when the API answers with an error status. Carries the envelope's fields.

    Attributes:
        status: the HTTP status code.
        code: the envelope's error code, e.g. ``VALIDATION_ERROR``.
        message: the envelope's message (what was wrong and how to fix it).
        details: the envelope's details, e.g. a list of ``{"field", "message", ...}`` for validation errors.
        request_id: the ``X-Request-ID`` of the failed request, to quote in bug reports.
        headers: the response headers.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{rid}"

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait before retrying (``Retry-After``), if it said."""
        raw = self.headers.get("Retry-After") or self.headers.get("retry-after")
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


class BadRequestError(ApiError):
    """Raised on 400: the body is not acceptable JSON (malformed, NaN, nested too deeply, empty)."""


class AuthenticationError(ApiError):
    """Raised on 401: the API key is missing or not valid."""


class QuotaExceededError(ApiError):
    """Raised on 402: the caller's daily job quota is used up."""


class PermissionDeniedError(ApiError):
    """Raised on 403: the caller's role may not do this."""


class NotFoundError(ApiError):
    """Raised on 404: no such job (or not the caller's), upload or route."""


class ConflictError(ApiError):
    """Raised on 409: the job's state does not allow this, or an Idempotency-Key is still in flight."""


class GoneError(ApiError):
    """Raised on 410: an artifact was deleted by the retention policy."""


class PayloadTooLargeError(ApiError):
    """Raised on 413: the body or upload is bigger than the server accepts."""


class UnsupportedMediaTypeError(ApiError):
    """Raised on 415: the content type is not one the route takes."""


class ValidationFailed(ApiError):
    """Raised on 422: a field is invalid (``details`` names it), or an Idempotency-Key was reused with another
    body."""


class RateLimitError(ApiError):
    """Raised on 429: too many requests; ``retry_after`` says when to come back."""


class ServerError(ApiError):
    """Raised on 5xx answers not covered by a narrower class."""


class ServiceUnavailableError(ServerError):
    """Raised on 503: the queue is full or a dependency is down; ``retry_after`` says when to come back."""


class GenerationTimeout(ServerError):
    """Raised on 504 from ``generate``: the job did not finish in time and keeps running; see ``job_id``."""

    @property
    def job_id(self) -> str | None:
        return self.details.get("job_id") if isinstance(self.details, dict) else None


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: QuotaExceededError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: ValidationFailed,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GenerationTimeout,
}


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """The typed error for an error answer: the envelope's fields when the body is one, else the raw text."""
    rid = headers.get("X-Request-ID") or headers.get("x-request-id")
    code, message, details = f"HTTP_{status}", "", None
    try:
        err = json.loads(body)["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
        details = err.get("details")
        rid = err.get("request_id") or rid
    except (ValueError, KeyError, TypeError):
        message = body[:500].decode("utf-8", "replace").strip()
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status, code, message or f"HTTP {status}", details=details, request_id=rid, headers=headers)
