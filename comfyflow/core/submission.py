"""Submitting work: admission control, Idempotency-Key, daily quota and enqueue (DESIGN decision 6).

Answers from Redis alone; Prefect being down does not stop a submission.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from comfyflow.core.queue import queue_depth
from comfyflow.core.runtime import Runtime
from comfyflow.errors import (
    IdempotencyConflict,
    IdempotencyInFlight,
    Overloaded,
    QuotaExceeded,
    ValidationError,
)
from comfyflow.models import Img2ImgRequest, Job

PENDING_TTL_MS = 60_000


def fingerprint(request: Any) -> str:
    """A stable hash of the validated request body (field order and defaults do not matter)."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def quota_key(prefix: str, owner: str, day: str) -> str:
    """The owner's daily job counter (single jobs and batch items count against the same one)."""
    return f"{prefix}:quota:{_h(owner)}:{day}"


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool = False


class Submitter:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def idem_key(self, owner: str, key: str) -> str:
        return f"{self.rt.store.keys.prefix}:idem:{_h(owner)}:{_h(key)}"

    async def check_admission(self) -> None:
        """Raises Overloaded when the queue is deeper than COMFYFLOW_MAX_QUEUE_DEPTH."""
        depth = sum((await queue_depth(self.rt.redis, self.rt.store.keys)).values())
        # Queued batch items have their own admission limit (comfyflow/core/batches.py): a big batch must not
        # turn interactive jobs away.
        depth = max(0, depth - int(await self.rt.redis.get(self.rt.store.keys.batch_backlog) or 0))
        limit = self.rt.settings.max_queue_depth
        if depth >= limit:
            raise Overloaded(
                f"The queue holds {depth} jobs, at its limit of {limit} (COMFYFLOW_MAX_QUEUE_DEPTH); retry later.",
                retry_after=5.0,
                details={"queue_depth": depth, "limit": limit},
            )

    async def submit(
        self,
        request: Any,
        *,
        owner: str,
        idempotency_key: str | None = None,
        idempotency_scope: str | None = None,
        daily_limit: int | None = None,
        day: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Submitted:
        """Queue one job for ``owner``. An ``idempotency_key`` is looked up within ``idempotency_scope`` (the
        caller's credential, see comfyflow/api/jobs.py), or the owner when none is given.

        Raises:
            Overloaded, QuotaExceeded, IdempotencyConflict (other body), IdempotencyInFlight, ValidationError.
        """
        store = self.rt.store
        fp = fingerprint(request)
        idem = None
        if idempotency_key:
            idem = (self.idem_key(idempotency_scope or owner, idempotency_key), fp)
            res = await store.scripts.run("idem_begin", [idem[0]], [fp, PENDING_TTL_MS])
            state = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
            if state == "in_progress":
                raise IdempotencyInFlight(
                    "A request with this Idempotency-Key is still being handled; retry in a moment.",
                    details={"idempotency_key": idempotency_key},
                )
            if state in ("existing", "mismatch"):
                return await self._replay(state, res[1], idempotency_key)
        try:
            await self.check_admission()
            if isinstance(request, Img2ImgRequest):
                await self._check_upload(owner, request.init_image)
            quota = (quota_key(store.keys.prefix, owner, day), daily_limit) if daily_limit is not None else None
            out = await store.submit(request, owner=owner, idempotency=idem, daily_quota=quota, extra=extra)
        except BaseException:
            if idem:
                await store.scripts.run("idem_abort", [idem[0]], [fp])
            raise
        if out.outcome == "quota":
            if idem:
                await store.scripts.run("idem_abort", [idem[0]], [fp])
            raise QuotaExceeded(
                f"Daily job quota of {daily_limit} is used up; it resets at 00:00 UTC.",
                details={"limit": daily_limit},
            )
        if out.outcome in ("existing", "mismatch"):
            return await self._replay(out.outcome, out.job.job_id if out.job else "", idempotency_key or "")
        assert out.job is not None
        return Submitted(out.job)

    async def _replay(self, state: str, job_id: Any, key: str) -> Submitted:
        job_id = job_id.decode() if isinstance(job_id, bytes) else str(job_id)
        if state == "mismatch":
            raise IdempotencyConflict(
                "This Idempotency-Key was used with a different request body; use a new key for a new request.",
                details={"idempotency_key": key, "job_id": job_id},
            )
        job = await self.rt.store.get(job_id)
        if job is None:
            raise IdempotencyConflict("The job this Idempotency-Key created has expired; use a new key.")
        return Submitted(job, replayed=True)

    async def _check_upload(self, owner: str, upload_id: str) -> None:
        if await self.rt.storage.info(f"uploads/{owner}/{upload_id}") is None:
            raise ValidationError(
                f"init_image {upload_id!r} is not one of your uploads; upload the image with POST /api/v1/uploads "
                "and pass the returned id.",
                details=[{"field": "init_image", "value": upload_id}],
            )
