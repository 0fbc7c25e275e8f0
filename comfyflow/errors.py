"""The one error tree. No HTTP in it: the API layer alone maps these to status codes.

Each error carries a stable ``code`` (the API's error code), a human ``message`` that names the value, what was
expected and the fix, and ``details`` (JSON-able) such as per-node messages.
"""

from __future__ import annotations

from typing import Any


class ComfyflowError(Exception):
    """Base of every error comfyflow raises on purpose."""

    code = "INTERNAL_ERROR"
    #: Whether a new attempt may succeed where this one failed.
    transient = False

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details if details is not None else {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class ConfigError(ComfyflowError):
    """Raised when a setting has a value comfyflow cannot use."""

    code = "CONFIG_ERROR"


class ValidationError(ComfyflowError):
    """Raised when a request or graph is invalid; retrying cannot help."""

    code = "VALIDATION_ERROR"


class NotFound(ComfyflowError):
    """Raised when a job, batch, upload or artifact does not exist (or is not the caller's)."""

    code = "NOT_FOUND"


class Unauthorized(ComfyflowError):
    """Raised when credentials are missing or invalid (one message for every kind of bad credential)."""

    code = "UNAUTHORIZED"


class Forbidden(ComfyflowError):
    """Raised when the caller is known but its role may not do this."""

    code = "FORBIDDEN"


class Gone(ComfyflowError):
    """Raised when an artifact existed but was deleted by retention."""

    code = "GONE"


class Conflict(ComfyflowError):
    """Raised when a transition is not allowed from the job's current state."""

    code = "CONFLICT"


class IdempotencyConflict(ComfyflowError):
    """Raised when an Idempotency-Key is reused with another body."""

    code = "IDEMPOTENCY_CONFLICT"


class IdempotencyInFlight(IdempotencyConflict):
    """Raised when an Idempotency-Key is reused while its first request is still being handled."""


class QuotaExceeded(ComfyflowError):
    """Raised when the caller's daily job quota is used up."""

    code = "QUOTA_EXCEEDED"


class RateLimited(ComfyflowError):
    """Raised when the caller sent more requests than its per-minute limit."""

    code = "RATE_LIMIT_EXCEEDED"

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class Overloaded(ComfyflowError):
    """Raised when the queue is over its admission limit; the caller should come back later."""

    code = "BACKEND_UNAVAILABLE"
    transient = True

    def __init__(self, message: str, *, retry_after: float = 5.0, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class PluginError(ComfyflowError):
    """Raised when a plugin cannot be found or loaded."""

    code = "PLUGIN_ERROR"


# --- failures of a render attempt, classified (DESIGN.md decision 5) -------------------------------------------


class RenderError(ComfyflowError):
    """Base of errors raised while a job is being rendered or stored."""

    code = "RENDER_ERROR"


class GraphInvalid(RenderError):
    """Raised when ComfyUI (or our check against its /object_info) rejects the graph. Permanent."""

    code = "INVALID_GRAPH"


class ExecutionFailed(RenderError):
    """Raised when a node fails at run time (``execution_error``). Permanent: the same graph fails again."""

    code = "EXECUTION_ERROR"


class BackendUnavailable(RenderError):
    """Raised when a backend refuses connections, answers 5xx, or drops the socket. Transient."""

    code = "BACKEND_UNAVAILABLE"
    transient = True


class NoHealthyBackend(BackendUnavailable):
    """Raised when the pool has no healthy backend that can take a job yet (all down, or not through the
    health hysteresis yet). The attempt waits for one (core/backend_wait.py) before it fails with this."""


class OutOfMemory(RenderError):
    """Raised when a node fails with an out-of-memory error. Retried once after ``/free``."""

    code = "OUT_OF_MEMORY"
    transient = True


class Stalled(RenderError):
    """Raised when a render sends no event for longer than the stall timeout. Transient."""

    code = "STALLED"
    transient = True


class DeviceFailed(RenderError):
    """Raised when a backend's device failed (CUDA error, device lost). The backend is quarantined until it
    passes health checks again, and the job is retried on another one. Transient."""

    code = "DEVICE_ERROR"
    transient = True


class OutputTooLarge(RenderError):
    """Raised when an output file is bigger than the configured cap. Permanent."""

    code = "OUTPUT_TOO_LARGE"


class BadOutput(RenderError):
    """Raised when an image output is not what it claims (wrong magic bytes, truncated, undecodable) or is a
    decompression bomb. Permanent: the job fails and nothing of it is stored."""

    code = "BAD_OUTPUT"


class NoOutputs(RenderError):
    """Raised when a prompt finished but produced no output file. Permanent."""

    code = "NO_OUTPUTS"


class StorageError(RenderError):
    """Raised when artifacts cannot be written or verified. Transient within the job's bound."""

    code = "STORAGE_ERROR"
    transient = True


class Canceled(RenderError):
    """Raised inside a render when the job was canceled. Never retried."""

    code = "CANCELED"


class LeaseLost(RenderError):
    """Raised when this worker no longer owns the attempt (reclaimed, canceled, or superseded)."""

    code = "LEASE_LOST"


class AttemptsExhausted(RenderError):
    """Raised when a job used all its attempts."""

    code = "ATTEMPTS_EXHAUSTED"
