"""The job store: every job state transition, each one atomic Lua script that checks (state, attempt).

Redis is the single source of truth for jobs. A worker holds a :class:`Claim` on one attempt; every write it
makes names that attempt and its worker id, so a stale worker (reclaimed, canceled, superseded) cannot
overwrite a newer attempt: its write is refused and it learns it lost the job.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from comfyflow.core.hotline import HotLine
from comfyflow.core.keys import GROUP, PRIORITIES, Keys
from comfyflow.core.scripts import Scripts
from comfyflow.metrics import size_class
from comfyflow.models import ErrorInfo, Job, JobResult, JobState, Priority, Progress
from comfyflow.settings import Settings

JSON_FIELDS = ("request", "labels", "progress", "result", "error", "last_error", "prompts")


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of one job, from one queue message."""

    job_id: str
    attempt: int
    worker: str
    stream: str
    msg_id: str


@dataclass(frozen=True)
class SubmitOutcome:
    """What the submit script decided: ``outcome`` is "ok", "existing", "mismatch", "legacy" (the key's record has
    an untagged fingerprint: core/submission.py), "quota", "overloaded", "ratelimited" or "exists"; ``raw`` is the
    job's hash for "ok" (the fields the script wrote) and "existing" (read in the same round trip)."""

    outcome: str
    raw: dict[str, str] | None = None
    #: The job id (existing, mismatch, legacy), the queue depth (overloaded) or the count used (quota).
    detail: str = ""
    #: (allowed, remaining, reset in ms) of the request rate limit, when one was given.
    rate: tuple[bool, int, int] | None = None

    @property
    def job(self) -> Job | None:
        return job_from_hash(self.raw) if self.raw else None


@dataclass(frozen=True)
class SubmitLimits:
    """What the submit script enforces besides the job itself (each part optional)."""

    #: Refuse when this many interactive jobs wait (COMFYFLOW_MAX_QUEUE_DEPTH); None = no admission check.
    max_depth: int | None = None
    #: (ratelimit key, requests per window, window ms, member): one request counted in a sliding window.
    rate_limit: tuple[str, int, int, str] | None = None


@dataclass(frozen=True)
class QueueMessage:
    stream: str
    msg_id: str
    job_id: str
    attempt: int


def new_job_id() -> str:
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def job_from_hash(raw: dict[str, str]) -> Job:
    """Turn a job hash into the Job resource."""

    def js(name: str) -> Any:
        value = raw.get(name)
        return json.loads(value) if value else None

    return Job(
        job_id=raw["id"],
        status=JobState(raw["state"]),
        attempt=int(raw.get("attempt", 1)),
        max_attempts=int(raw.get("max_attempts", 1)),
        priority=Priority(raw.get("priority", "normal")),
        owner=raw.get("owner", "local"),
        request=js("request") or {},
        labels=js("labels") or [],
        progress=Progress(**(js("progress") or {})),
        result=JobResult(**r) if (r := js("result")) else None,
        error=ErrorInfo(**e) if (e := js("error")) else None,
        backend=raw.get("backend") or None,
        worker=raw.get("worker") or None,
        cancel_requested=raw.get("cancel") == "1",
        flow_run_id=raw.get("flow_run_id") or None,
        batch_id=raw.get("batch") or None,
        created_at=_ts(raw.get("created_at")) or datetime.now(UTC),
        started_at=_ts(raw.get("started_at")),
        render_started_at=_ts(raw.get("render_started_at")),
        render_finished_at=_ts(raw.get("render_finished_at")),
        finished_at=_ts(raw.get("finished_at")),
    )


def compact_json(value: Any) -> str:
    """Compact JSON text (orjson; the standard library for what orjson refuses, e.g. integers beyond 64 bits)."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), default=str)


def _pairs(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name, value in fields.items():
        if name in JSON_FIELDS and not isinstance(value, str):
            value = compact_json(value)
        out += [name, value]
    return out


class JobStore:
    """Atomic job transitions over one Redis client. Open once per process and share."""

    def __init__(
        self, redis: Redis, settings: Settings, *, clock: Callable[[], float] = time.time, hot: HotLine | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.clock = clock
        self.scripts = Scripts(redis)
        #: The submit script and job reads go over this thin connection when set (the API; core/hotline.py).
        self.hot = hot

    @property
    def ttl(self) -> int:
        return self.settings.job_ttl_seconds

    async def ensure_groups(self) -> None:
        """Create the queue streams and their consumer group (idempotent)."""
        from comfyflow.core.queue import ensure_group  # queue imports this module's QueueMessage

        for prio in PRIORITIES:
            await ensure_group(self.redis, self.keys.queue(prio))

    # --- submit and read ------------------------------------------------------------------------------------

    async def submit(
        self,
        request: Any,
        *,
        owner: str = "local",
        job_id: str | None = None,
        max_attempts: int | None = None,
        extra: dict[str, Any] | None = None,
        idempotency: tuple[str, str] | None = None,
        daily_quota: tuple[str, int] | None = None,
        limits: SubmitLimits | None = None,
        body: dict[str, Any] | None = None,
    ) -> SubmitOutcome:
        """Create a queued job for a validated request (a pydantic model) in one round trip, atomically with the
        request rate limit, the idempotency record, the admission check and the daily quota count.

        Args:
            idempotency: (redis key, body fingerprint), or None.
            daily_quota: (counter key, limit), or None for unlimited.
            limits: admission, request rate limit and the owner's running limit (see :class:`SubmitLimits`).
            body: ``request.model_dump(mode="json")`` when the caller has it already.
        Returns:
            The script's outcome, with the job as the script read it back (no second round trip).
        """
        job_id = job_id or new_job_id()
        now = self.clock()
        fields = self.job_fields(
            request, owner=owner, job_id=job_id, now=now, max_attempts=max_attempts, extra=extra, body=body
        )
        limits = limits or SubmitLimits()
        idem_key, fingerprint = idempotency or (f"{self.keys.prefix}:idem:none", "")
        quota_key, limit = daily_quota or (f"{self.keys.prefix}:quota:none", -1)
        rl_key, rl_limit, rl_window, rl_member = limits.rate_limit or (f"{self.keys.prefix}:rl:none", -1, 0, "")
        keys = [
            self.keys.job(job_id),
            self.keys.notify,
            self.keys.owner_jobs(owner),
            self.keys.events(job_id),
            idem_key,
            quota_key,
            rl_key,
            self.keys.batch_backlog,
            *(self.keys.queue(p) for p in PRIORITIES),
        ]
        depth = -1 if limits.max_depth is None else limits.max_depth
        args = [self.keys.prefix, now, fingerprint, self.settings.idempotency_ttl_seconds, limit, 2 * 86400, depth,
                rl_limit, rl_window, rl_member]  # fmt: skip
        pairs = [str(v) for v in _pairs(fields)]
        # the fields as one argument: packing 40 arguments costs the client more than one JSON string
        args.append(compact_json(pairs))
        res = await self.scripts.run("submit", keys, args, via=self.hot)
        outcome = _s(res[0])
        rate = None if int(res[1]) < 0 else (int(res[1]) == 1, int(res[2]), int(res[3]))
        detail = _s(res[4]) if len(res) > 4 else ""
        raw = None
        if outcome == "ok":  # the hash is what was just written, and the queue message (its id is the detail)
            raw = dict(zip(pairs[::2], pairs[1::2], strict=True))
            raw.update(msg_stream=self.keys.queue(raw["priority"]), msg_id=detail)
        elif outcome == "existing" and len(res) > 5 and res[5]:
            flat = res[5]
            raw = {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        return SubmitOutcome(outcome, raw, detail, rate)

    def job_fields(
        self,
        request: Any,
        *,
        owner: str,
        job_id: str,
        now: float,
        max_attempts: int | None = None,
        extra: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The hash of a new queued job (shared by ``submit`` and the bulk submit of batches)."""
        body = body if body is not None else request.model_dump(mode="json")
        return {
            "id": job_id,
            "state": JobState.QUEUED.value,
            "attempt": 1,
            "max_attempts": max_attempts or self.settings.max_attempts,
            "priority": body.get("priority", "normal"),
            "owner": owner,
            "request": body,
            "labels": body.get("labels", []),
            "created_at": repr(now),
            "progress": {"value": 0, "phase": "queued"},
            "cancel": "0",
            "retention_s": self.settings.retention_days * 86400,
            "size": size_class(body),  # the latency SLO's image size class (comfyflow/metrics.py)
            **({"webhook": body["webhook"]} if body.get("webhook") else {}),  # watched by core/webhooks
            **(extra or {}),
        }

    async def raw(self, job_id: str) -> dict[str, str]:
        if self.hot is not None:
            flat = await self.hot.call("HGETALL", self.keys.job(job_id))  # strings, as pairs
            return dict(zip(flat[::2], flat[1::2], strict=True))
        data = await self.redis.hgetall(self.keys.job(job_id))
        return {_s(k): _s(v) for k, v in data.items()}

    async def get(self, job_id: str) -> Job | None:
        raw = await self.raw(job_id)
        return job_from_hash(raw) if raw else None

    # --- a worker's claim -----------------------------------------------------------------------------------

    async def claim(self, msg: QueueMessage, worker: str) -> Claim | None:
        """queued -> running for the attempt in ``msg``; None when the message is stale (ack it then)."""
        keys = [self.keys.job(msg.job_id), self.keys.events(msg.job_id), msg.stream]
        res = await self.scripts.run("claim", keys, [msg.attempt, worker, repr(self.clock()), msg.msg_id])
        if _s(res[0]) != "ok":
            return None
        return Claim(msg.job_id, msg.attempt, worker, msg.stream, msg.msg_id)

    async def drop_message(self, msg: QueueMessage) -> None:
        """Acknowledge and delete a stale queue message."""
        await self.redis.xack(msg.stream, GROUP, msg.msg_id)
        await self.redis.xdel(msg.stream, msg.msg_id)

    async def heartbeat(self, claim: Claim) -> Literal["ok", "cancel", "lost"]:
        """Renew the lease; learn whether a cancel was requested or the attempt was lost."""
        res = await self.scripts.run(
            "heartbeat",
            [self.keys.job(claim.job_id), claim.stream],
            [claim.attempt, claim.worker, claim.worker, claim.msg_id],
        )
        return _s(res)  # type: ignore[return-value]

    async def update(self, claim: Claim, *, event: tuple[str, dict[str, Any]] | None = None, **fields: Any) -> bool:
        """Set fields of a running attempt (and emit an event). False when the attempt is no longer ours."""
        etype, edata = event if event else ("", {})
        args = [claim.attempt, claim.worker, etype, json.dumps(edata, default=str), *_pairs(fields)]
        res = await self.scripts.run("update", [self.keys.job(claim.job_id), self.keys.events(claim.job_id)], args)
        return _s(res) == "ok"

    async def annotate(self, job_id: str, attempt: int, **fields: Any) -> bool:
        """Note fields about attempt ``attempt`` (running or ended, e.g. its flow run); False when the job has moved
        on to another attempt or is gone. Never changes the job's state."""
        res = await self.scripts.run("annotate", [self.keys.job(job_id)], [attempt, *_pairs(fields)])
        return _s(res) == "ok"

    async def complete(self, claim: Claim, result: JobResult) -> bool:
        """running -> succeeded. Call only after every artifact and the metadata are stored and verified."""
        return await self._finish(
            claim,
            JobState.SUCCEEDED,
            result=result.model_dump(mode="json"),
            progress=Progress(value=1.0, phase="done").model_dump(),
        )

    async def fail(self, claim: Claim, error: ErrorInfo) -> bool:
        """running -> failed, for permanent errors."""
        return await self._finish(claim, JobState.FAILED, error=error.model_dump(mode="json"))

    async def confirm_canceled(self, claim: Claim) -> bool:
        """running -> canceled, once the backend was told to stop."""
        return await self._finish(claim, JobState.CANCELED)

    async def _finish(self, claim: Claim, state: JobState, **fields: Any) -> bool:
        args = [claim.attempt, claim.worker, state.value, repr(self.clock()), self.ttl, *_pairs(fields)]
        keys = [self.keys.job(claim.job_id), self.keys.events(claim.job_id), self.keys.retention]
        res = await self.scripts.run("finish", keys, args)
        return _s(res[0]) == "ok"

    async def give_up_attempt(
        self, claim: Claim, error: ErrorInfo, *, delay: float, final: ErrorInfo | None = None, free: bool = False
    ) -> tuple[str, int]:
        """End a running attempt after a transient error: the next attempt after ``delay`` seconds, or
        failed when attempts are used up (with ``final``), or canceled if a cancel was requested. ``free``
        (a release on shutdown) never uses up an attempt: the next one always runs.

        Returns:
            (outcome, attempt): outcome is "queued", "failed", "canceled" or "lost".
        """
        final = final or error
        keys = [self.keys.job(claim.job_id), self.keys.events(claim.job_id), self.keys.delayed, self.keys.notify]
        args = [
            claim.attempt,
            claim.worker,
            self.keys.prefix,
            repr(self.clock()),
            int(delay * 1000),
            error.model_dump_json(),
            final.model_dump_json(),
            self.ttl,
            error.code,
            free,
        ]
        res = await self.scripts.run("requeue", keys, args)
        return _s(res[0]), int(res[1]) if len(res) > 1 and _s(res[1]).isdigit() else claim.attempt

    # --- actions from outside (API, Prefect UI, reaper) -----------------------------------------------------

    async def cancel(self, job_id: str) -> str:
        """Cancel: a queued job becomes canceled at once; a running one gets a cancel request that its worker
        carries out (interrupting the backend). Returns "canceled", "requested", "gone" or the terminal state."""
        return _s(await self.scripts.run("cancel", *self.cancel_call(job_id)))

    def cancel_call(self, job_id: str) -> tuple[list[str], list[Any]]:
        """(keys, args) of the ``cancel`` script for one job (batches pipeline many of them)."""
        keys = [self.keys.job(job_id), self.keys.events(job_id), self.keys.delayed, self.keys.control]
        return keys, [repr(self.clock()), self.ttl]

    async def retry(self, job_id: str, *, flow_run_id: str | None = None) -> tuple[str, int | str]:
        """failed/canceled -> queued as the next attempt, with a fresh attempt budget.

        Returns:
            ("queued", attempt), ("state", current_state) when not retryable, or ("gone", "").
        """
        res = await self.scripts.run("retry", *self.retry_call(job_id, flow_run_id))
        outcome = _s(res[0])
        detail = _s(res[1]) if len(res) > 1 else ""
        return outcome, int(detail) if detail.isdigit() else detail

    def retry_call(self, job_id: str, flow_run_id: str | None = None) -> tuple[list[str], list[Any]]:
        """(keys, args) of the ``retry`` script for one job (batches pipeline many of them)."""
        keys = [self.keys.job(job_id), self.keys.events(job_id), self.keys.notify]
        return keys, [self.keys.prefix, self.settings.max_attempts, flow_run_id]

    async def promote_due(self, limit: int = 500) -> int:
        """Put jobs whose retry delay has passed back on their queue."""
        now_ms = int(self.clock() * 1000)
        res = await self.scripts.run(
            "promote", [self.keys.delayed, self.keys.notify], [self.keys.prefix, now_ms, limit]
        )
        return int(res)

    async def reclaim(self, msg: QueueMessage, error: ErrorInfo, final: ErrorInfo) -> str:
        """Handle a message whose consumer went silent: next attempt, redelivery, or drop if stale."""
        keys = [
            self.keys.job(msg.job_id),
            self.keys.events(msg.job_id),
            self.keys.delayed,
            self.keys.notify,
            msg.stream,
        ]
        args = [
            msg.msg_id,
            msg.attempt,
            self.keys.prefix,
            repr(self.clock()),
            error.model_dump_json(),
            final.model_dump_json(),
            self.ttl,
        ]
        res = await self.scripts.run("reclaim", keys, args)
        return _s(res[0])


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
