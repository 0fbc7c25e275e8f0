"""How comfyflow's outcomes become task failures, and which of them a Prefect retry may help with.

Every error the API client raises (``comfyflow.client.errors``) fails the task as it is, with the API's code,
message and request id. Transient ones (the API unreachable, 5xx, 503 or 429 with Retry-After, an Idempotency-Key
still in flight, a wait that timed out) let the task's Prefect retries run; anything else (bad input, auth,
quota, a job that failed) fails the task for good, since running it again would fail the same way.
"""

from __future__ import annotations

from typing import Any

from comfyflow.client import (
    BatchTimeout,
    ClientError,
    ConflictError,
    JobTimeout,
    RateLimitError,
    ServerError,
    TransportError,
)
from comfyflow.models import ErrorInfo

TRANSIENT: tuple[type[BaseException], ...] = (
    TransportError, ServerError, RateLimitError, ConflictError, JobTimeout, BatchTimeout,
)  # fmt: skip


class JobFailed(ClientError):
    """Raised when a job ended ``failed``, ``canceled`` or ``expired``: the task fails with the job's error."""

    code = "JOB_FAILED"

    def __init__(self, job_id: str, status: str, error: ErrorInfo | None) -> None:
        reason = f"{error.code}: {error.message}" if error else status
        super().__init__(
            f"Job {job_id} ended {status} ({reason}). Retry it with POST /api/v1/jobs/{job_id}/retry.",
            details={"job_id": job_id, "status": status, "error": error.model_dump() if error else None},
        )
        self.job_id = job_id
        self.status = status
        self.error = error


class BatchFailed(ClientError):
    """Raised by ``wait_for_batch`` when items of the batch failed or it was canceled."""

    code = "BATCH_FAILED"

    def __init__(self, batch_id: str, status: str, counts: dict[str, int]) -> None:
        super().__init__(
            f"Batch {batch_id} ended {status}: {counts}. Retry its failed items with "
            f"POST /api/v1/batches/{batch_id}/retry.",
            details={"batch_id": batch_id, "status": status, "counts": counts},
        )
        self.batch_id = batch_id


def is_transient(exc: BaseException | None) -> bool:
    """True when running the task again may succeed (the error was the network's or the server's load)."""
    return isinstance(exc, TRANSIENT)


async def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A ``retry_condition_fn``: retry the task only after a transient error."""
    try:
        exc = await state.aresult(raise_on_failure=False)
    except Exception as err:  # the result itself could not be read: treat like the error it is
        exc = err
    return is_transient(exc)
