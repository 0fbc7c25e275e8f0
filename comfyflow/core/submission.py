"""Submitting work: admission control, Idempotency-Key, daily quota, rate limit and enqueue (DESIGN decision 6),
in one Redis round trip (``lua/submit.lua``).

Answers from Redis alone; Prefect being down does not stop a submission. Nothing is written before the one
script runs, so an API process killed at any point leaves either no trace or the whole job: a retry with the same
Idempotency-Key is answered at once (created, or replayed), never "still in progress".
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Any

import orjson

from comfyflow.core.runtime import Runtime
from comfyflow.core.store import SubmitLimits, job_from_hash
from comfyflow.errors import IdempotencyConflict, Overloaded, QuotaExceeded, ValidationError
from comfyflow.models import Img2ImgRequest, Job

RATE_WINDOW_MS = 60_000


#: The tag of fingerprints hashed from orjson's canonical text. Untagged ones, hashed from the standard library's
#: (which differs for non-ASCII text and float exponents), may still be recorded for an Idempotency-Key: the submit
#: script answers "legacy" for those and the submit asks again with one of that kind.
FINGERPRINT_TAG = "2."


def fingerprint(request: Any, body: dict[str, Any] | None = None) -> str:
    """A stable hash of the validated request body (field order and defaults do not matter), tagged
    :data:`FINGERPRINT_TAG`; a body orjson cannot write (integers beyond 64 bits) gets :func:`legacy_fingerprint`."""
    body = body if body is not None else request.model_dump(mode="json")
    try:
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)  # ~1 us; json.dumps sorted ~6 us
    except orjson.JSONEncodeError:
        return legacy_fingerprint(request, body)
    return FINGERPRINT_TAG + hashlib.sha256(canonical).hexdigest()[:32]


def legacy_fingerprint(request: Any, body: dict[str, Any] | None = None) -> str:
    """The untagged fingerprint recorded before :data:`FINGERPRINT_TAG`: a hash of the standard library's text."""
    body = body if body is not None else request.model_dump(mode="json")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


#: The hash of an owner (or idempotency scope), kept: the same few callers submit many times (keys themselves are
#: new each time and are not kept).
_owner_h = functools.lru_cache(maxsize=10_000)(_h)


def quota_key(prefix: str, owner: str, day: str) -> str:
    """The owner's daily job counter (single jobs and batch items count against the same one)."""
    return f"{prefix}:quota:{_owner_h(owner)}:{day}"


@dataclass(frozen=True)
class Submitted:
    #: The job's hash, as the submit script read it back.
    raw: dict[str, str]
    replayed: bool = False

    @property
    def job(self) -> Job:
        return job_from_hash(self.raw)


@dataclass
class RateCount:
    """A request rate limit counted by the submit script: ``limit`` requests per minute in; the script's decision
    out, set once the script ran (also when the submit then raises), else None."""

    limit: int
    rate: tuple[bool, int, int] | None = None  # (allowed, remaining, reset ms)


class RateLimitedSubmit(Exception):
    """The submit's request was over its rate limit: nothing was written (the decision is in the RateCount)."""


def overloaded(depth: int, limit: int) -> Overloaded:
    return Overloaded(
        f"The queue holds {depth} jobs, at its limit of {limit} (COMFYFLOW_MAX_QUEUE_DEPTH); retry later.",
        retry_after=5.0,
        details={"queue_depth": depth, "limit": limit},
    )


class Submitter:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def idem_key(self, owner: str, key: str) -> str:
        return f"{self.rt.store.keys.prefix}:idem:{_owner_h(owner)}:{_h(key)}"

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
        rate_limit: RateCount | None = None,
    ) -> Submitted:
        """Queue one job for ``owner``, in one Redis round trip.

        Args:
            rate_limit: the owner's requests per minute, counted with this submit (None = not counted here); the
                decision is written back into it.
        Raises:
            RateLimitedSubmit, Overloaded, QuotaExceeded, IdempotencyConflict (other body, or its job expired),
            ValidationError.
        """
        store = self.rt.store
        if isinstance(request, Img2ImgRequest):
            await self._check_upload(owner, request.init_image)
        body = request.model_dump(mode="json")
        scope = idempotency_scope or owner
        idem = (self.idem_key(scope, idempotency_key), fingerprint(request, body)) if idempotency_key else None
        keys = store.keys
        limits = SubmitLimits(
            max_depth=self.rt.settings.max_queue_depth,
            rate_limit=(keys.ratelimit(owner), rate_limit.limit, RATE_WINDOW_MS, os.urandom(8).hex())
            if rate_limit is not None
            else None,
        )
        quota = (quota_key(keys.prefix, owner, day), daily_limit) if daily_limit is not None else None
        out = await store.submit(
            request, owner=owner, idempotency=idem, daily_quota=quota, extra=extra, limits=limits, body=body
        )
        if rate_limit is not None:
            rate_limit.rate = out.rate
        if out.outcome == "ratelimited":
            raise RateLimitedSubmit()
        if out.outcome == "legacy" and idem is not None:  # the key's record has an untagged fingerprint
            idem = (idem[0], legacy_fingerprint(request, body))
            out = await store.submit(  # the request was counted against the rate limit by the first call
                request, owner=owner, idempotency=idem, daily_quota=quota, extra=extra,
                limits=replace(limits, rate_limit=None), body=body,
            )  # fmt: skip
        if out.outcome == "overloaded":
            raise overloaded(int(out.detail), self.rt.settings.max_queue_depth)
        if out.outcome == "quota":
            raise QuotaExceeded(
                f"Daily job quota of {daily_limit} is used up; it resets at 00:00 UTC.",
                details={"limit": daily_limit},
            )
        if out.outcome == "mismatch":
            raise IdempotencyConflict(
                "This Idempotency-Key was used with a different request body; use a new key for a new request.",
                details={"idempotency_key": idempotency_key, "job_id": out.detail},
            )
        if out.outcome == "existing":
            if out.raw is None:
                raise IdempotencyConflict("The job this Idempotency-Key created has expired; use a new key.")
            return Submitted(out.raw, replayed=True)
        if out.outcome != "ok" or out.raw is None:
            raise RuntimeError(f"the submit script answered {out.outcome!r}")
        return Submitted(out.raw)

    async def _check_upload(self, owner: str, upload_id: str) -> None:
        if await self.rt.storage.info(f"uploads/{owner}/{upload_id}") is None:
            raise ValidationError(
                f"init_image {upload_id!r} is not one of your uploads; upload the image with POST /api/v1/uploads "
                "and pass the returned id.",
                details=[{"field": "init_image", "value": upload_id}],
            )
