"""Batches: many jobs submitted as one, each item a normal job (same queue, slots, storage, retries).

A batch is created in one Lua script (``batch_submit.lua``): every item's job, the daily quota counted for all
of them, the batch record and its item list, or nothing. Each item's job records its batch, and every state
transition of an item keeps the batch's counts by state (``lib.lua count``), so reading a batch's progress is
one ``HGETALL`` however big it is. All of a batch's state is in Redis: it survives restarts of the API and the
workers, and of Redis with persistence.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from comfyflow.core.store import JobStore, _pairs, compact_json, job_from_hash
from comfyflow.errors import ValidationError
from comfyflow.models import JOB_REQUEST, Job, JobState, Priority

#: How many job scripts one pipeline round trip carries when cancelling or retrying a batch's items.
CHUNK = 500
#: Items staged per HSET, and released per script: each script stays well under 50 ms of Redis time.
STAGE_CHUNK = 200
RELEASE_CHUNK = 200
#: A release script stops after this many ms of its own run time (the rest goes in the next one).
RELEASE_BUDGET_MS = 10
#: Staged items of a batch never committed (its API process died) expire after this long.
STAGING_TTL_SECONDS = 600
MAX_LABELS = 20
Label = Annotated[str, Field(min_length=1, max_length=100)]


class BatchRequest(BaseModel):
    """A list of job requests, or a base request and a sweep of values expanded as a cartesian product."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100, description="Shown in the Prefect UI.")
    items: list[dict[str, Any]] | None = Field(default=None, min_length=1, description="Job requests.")
    base: dict[str, Any] | None = Field(default=None, description="The request every sweep item starts from.")
    sweep: dict[str, list[Any]] | None = Field(
        default=None, description='Field -> values, e.g. {"seed": [1, 2], "prompt": ["a", "b"]}: 4 items.'
    )
    priority: Priority | None = Field(default=None, description="Queue class of every item (overrides theirs).")
    labels: list[Label] = Field(default_factory=list, max_length=10, description="Added to every item's labels.")

    @model_validator(mode="after")
    def _one_form(self) -> BatchRequest:
        if (self.items is None) == (self.base is None) or (self.items is not None and self.sweep is not None):
            raise ValueError('send either "items" (a list of job requests) or "base" with "sweep"')
        if self.base is not None:
            if not self.sweep:
                raise ValueError('"sweep" needs at least one field with a list of values, e.g. {"seed": [1, 2]}')
            for name, values in self.sweep.items():
                if name in ("kind", "labels", "priority"):
                    raise ValueError(f"sweep field {name!r} cannot be swept; sweep request parameters")
                if not values:
                    raise ValueError(f"sweep field {name!r} has no values; give at least one")
        return self

    def size(self) -> int:
        if self.items is not None:
            return len(self.items)
        n = 1
        for values in (self.sweep or {}).values():
            n *= len(values)
        return n


class Batch(BaseModel):
    """A batch as served by the API (its items are paged separately)."""

    batch_id: str
    name: str | None = None
    status: str = Field(description="queued, running, succeeded, failed (some items failed) or canceled.")
    total: int
    counts: dict[str, int] = Field(description="Items by job state.")
    progress: float = Field(ge=0.0, le=1.0, description="Share of items finished (any terminal state).")
    priority: Priority | None = None
    labels: list[str] = Field(default_factory=list)
    owner: str
    role: str | None = None
    cancel_requested: bool = False
    flow_run_id: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    sweep: dict[str, list[Any]] | None = Field(
        default=None, description="The swept fields and their values, in the order the items were expanded."
    )


def new_batch_id() -> str:
    return uuid.uuid4().hex


def batch_label(batch_id: str) -> str:
    """The label every item carries (and so the tag of its flow runs in Prefect: ``label:batch:<id>``)."""
    return f"batch:{batch_id}"


def expand(batch: BatchRequest, *, batch_id: str, max_items: int) -> list[Any]:
    """Every item as a validated job request (the same models single jobs use), labelled with the batch.

    Raises:
        ValidationError: too many items, or items that do not validate (each error names its item).
    """
    size = batch.size()
    if size > max_items:
        form = "items" if batch.items is not None else "sweep combinations"
        raise ValidationError(
            f"The batch has {size} {form}; at most {max_items} are allowed (COMFYFLOW_MAX_BATCH_ITEMS). "
            "Split it into several batches.",
            details=[{"field": "items" if batch.items is not None else "sweep", "value": size, "limit": max_items}],
        )
    extra_labels = [batch_label(batch_id), *batch.labels]
    if batch.items is not None:
        bodies: Any = ((f"items.{i}", item) for i, item in enumerate(batch.items))
    else:
        names = list(batch.sweep or {})
        combos = itertools.product(*(batch.sweep or {}).values())
        bodies = (
            (f"sweep[{i}]", {**(batch.base or {}), **dict(zip(names, combo, strict=True))})
            for i, combo in enumerate(combos)
        )
    out: list[Any] = []
    errors: list[dict[str, Any]] = []
    for where, body in bodies:
        if not isinstance(body, dict):
            errors.append({"field": where, "message": "expected a job request object", "type": "dict_type"})
            continue
        body = dict(body)
        if batch.priority is not None:
            body["priority"] = batch.priority.value
        labels = body.get("labels") or []
        body["labels"] = [*extra_labels, *labels] if isinstance(labels, list) else labels
        try:
            out.append(JOB_REQUEST.validate_python(body))
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_url=False)[:5]:
                loc = [str(p) for p in err["loc"] if str(p) not in ("txt2img", "img2img", "workflow")]
                errors.append({"field": ".".join([where, *loc]), "message": err["msg"], "type": err["type"]})
        if len(errors) >= 20:
            break
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValidationError(f"{first['field']}: {first['message']}{more}", details=errors)
    if any(len(r.labels) > MAX_LABELS for r in out):
        raise ValidationError(
            f"An item has more than {MAX_LABELS} labels once the batch's own ({len(extra_labels)}) are added; "
            "send fewer labels.",
            details=[{"field": "labels", "limit": MAX_LABELS}],
        )
    return out


def batch_status(total: int, counts: dict[str, int], cancel_requested: bool) -> str:
    queued, running = counts.get("queued", 0), counts.get("running", 0)
    if queued + running > 0:
        done = total - queued - running
        return "running" if running or done else "queued"
    if counts.get("failed", 0):
        return "failed"
    if counts.get("canceled", 0) or cancel_requested:
        return "canceled"
    return "succeeded"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


@dataclass(frozen=True)
class Created:
    outcome: str  # "ok", "existing" (same Idempotency-Key and body), "mismatch", "quota"
    batch_id: str
    used: int = 0


class BatchStore:
    """Batches over the job store's Redis client. Open once per process and share."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys

    async def create(
        self,
        requests: list[Any],
        *,
        owner: str,
        batch_id: str | None = None,
        name: str | None = None,
        priority: Priority | None = None,
        labels: list[str] | None = None,
        role: str | None = None,
        extra: dict[str, Any] | None = None,
        daily_quota: tuple[str, int] | None = None,
        idempotency: tuple[str, str] | None = None,
        sweep: dict[str, list[Any]] | None = None,
    ) -> Created:
        """Create the batch and a queued job per request, atomically.

        Args:
            requests: validated job requests (see :func:`expand`).
            extra: more fields for every item's job hash (e.g. the caller's role).
            daily_quota: (counter key, limit): the batch is refused unless all its items fit.
            idempotency: (redis key, body fingerprint), or None.
            sweep: the swept fields and values the items were expanded from (for contact sheets), or None.
        """
        batch_id = batch_id or new_batch_id()
        now = self.store.clock()
        record = {
            "id": batch_id,
            "owner": owner,
            "total": len(requests),
            "name": name or "",
            "priority": priority.value if priority else "",
            "labels": json.dumps(labels or []),
            "role": role or "",
            "created_at": repr(now),
            "cancel": "0",
        }
        if sweep:
            record["sweep"] = json.dumps(sweep, separators=(",", ":"))
        staging, order = self.keys.batch_staging(batch_id), self.keys.batch_order(batch_id)
        ids = [os.urandom(16).hex() for _ in requests]
        # 1. Stage: every item's fields, invisible (no job key, queue entry or index names them) and expiring.
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(requests), STAGE_CHUNK):
            chunk: dict[Any, Any] = {}
            part = zip(ids[start : start + STAGE_CHUNK], requests[start : start + STAGE_CHUNK], strict=True)
            for job_id, request in part:
                fields = self.store.job_fields(request, owner=owner, job_id=job_id, now=now, extra=extra)
                chunk[job_id] = compact_json([str(v) for v in _pairs(fields)])
            pipe.hset(staging, mapping=chunk)
            pipe.rpush(order, *ids[start : start + STAGE_CHUNK])
        pipe.expire(staging, STAGING_TTL_SECONDS)
        pipe.expire(order, STAGING_TTL_SECONDS)
        await pipe.execute()
        # 2. Commit (a short script whatever the size): from here on the batch exists, all of it.
        batch_pairs = [v for kv in record.items() for v in kv]
        idem_key, fingerprint = idempotency or (f"{self.keys.prefix}:idem:none", "")
        quota_key, limit = daily_quota or (f"{self.keys.prefix}:quota:none", -1)
        keys = [
            self.keys.batch(batch_id),
            self.keys.batch_counts(batch_id),
            self.keys.owner_batches(owner),
            quota_key,
            idem_key,
            self.keys.batch_backlog,
            self.keys.runs,
            staging,
            order,
        ]
        head = [self.keys.prefix, repr(now), limit, 2 * 86400, fingerprint,
                self.store.settings.idempotency_ttl_seconds, len(requests), STAGING_TTL_SECONDS]  # fmt: skip
        res = await self.store.scripts.run("batch_submit", keys, head + batch_pairs)
        outcome = _s(res[0])
        if outcome == "quota":
            return Created(outcome, batch_id, int(_s(res[1])))
        if outcome in ("existing", "mismatch"):
            return Created(outcome, _s(res[1]))
        if outcome != "ok":
            raise RuntimeError(f"batch {batch_id} was not created: {outcome}")
        # 3. Release the items as queued jobs, a chunk per script, so Redis serves everyone else in between.
        await self.release(batch_id)
        return Created(outcome, batch_id)

    async def release(self, batch_id: str, *, chunk: int | None = None) -> None:
        """Turn a committed batch's staged items into queued jobs, a chunk at a time, until none is left.

        The API does it right after the commit; a batch's watcher does it too, which finishes the work of an API
        process that died in between. Several processes may release one batch at once: each chunk is taken once.
        """
        keys = [
            self.keys.batch(batch_id),
            self.keys.batch_staging(batch_id),
            self.keys.batch_order(batch_id),
            self.keys.batch_items(batch_id),
            self.keys.notify,
        ]
        args = [self.keys.prefix, chunk or RELEASE_CHUNK, RELEASE_BUDGET_MS]
        while int(await self.store.scripts.run("batch_release", keys, args)) > 0:
            pass

    async def get(self, batch_id: str) -> Batch | None:
        """The batch with its counts (two reads, whatever its size); marks it finished when it is."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.batch(batch_id))
        pipe.hgetall(self.keys.batch_counts(batch_id))
        raw_b, raw_c = await pipe.execute()
        if not raw_b:
            return None
        rec = {_s(k): _s(v) for k, v in raw_b.items()}
        counts = {s.value: 0 for s in JobState}
        for k, v in raw_c.items():
            counts[_s(k)] = max(0, int(v))
        total = int(rec.get("total", 0))
        cancel = rec.get("cancel") == "1"
        status = batch_status(total, counts, cancel)
        finished_at = _ts(rec.get("finished_at"))
        if status not in ("queued", "running") and finished_at is None:
            finished_at = await self._finished(batch_id)
        done = total - counts["queued"] - counts["running"]
        return Batch(
            batch_id=batch_id,
            name=rec.get("name") or None,
            status=status,
            total=total,
            counts=counts,
            progress=round(done / total, 4) if total else 1.0,
            priority=Priority(rec["priority"]) if rec.get("priority") else None,
            labels=json.loads(rec.get("labels") or "[]"),
            owner=rec.get("owner", ""),
            role=rec.get("role") or None,
            cancel_requested=cancel,
            flow_run_id=rec.get("flow_run_id") or None,
            created_at=_ts(rec.get("created_at")) or datetime.now(UTC),
            finished_at=finished_at,
            sweep=json.loads(rec["sweep"]) if rec.get("sweep") else None,
        )

    async def _finished(self, batch_id: str) -> datetime:
        """Record when the batch finished; its records expire with its items' (COMFYFLOW_JOB_TTL_SECONDS)."""
        now = self.store.clock()
        ttl = self.store.ttl
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(self.keys.batch(batch_id), "finished_at", repr(now))
        pipe.hget(self.keys.batch(batch_id), "finished_at")
        for key in (self.keys.batch(batch_id), self.keys.batch_items(batch_id), self.keys.batch_counts(batch_id)):
            pipe.expire(key, ttl)
        res = await pipe.execute()
        return _ts(_s(res[1])) or datetime.now(UTC)

    async def set_fields(self, batch_id: str, **fields: Any) -> None:
        await self.redis.hset(self.keys.batch(batch_id), mapping={k: str(v) for k, v in fields.items()})

    async def item_ids(self, batch_id: str, start: int = 0, count: int = 100) -> list[str]:
        """Job ids of the batch's items ``start`` .. ``start + count - 1``, in submission order."""
        if count <= 0:
            return []
        return [_s(v) for v in await self.redis.lrange(self.keys.batch_items(batch_id), start, start + count - 1)]

    async def jobs(self, job_ids: list[str]) -> list[Job | None]:
        """The jobs, in one round trip (None for a job whose record expired)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        out: list[Job | None] = []
        for raw in await pipe.execute():
            out.append(job_from_hash({_s(k): _s(v) for k, v in raw.items()}) if raw else None)
        return out

    async def cancel(self, batch_id: str) -> dict[str, int]:
        """Cancel every item not finished yet: queued ones at once, running ones are interrupted by their
        worker. Returns how many items each outcome had ("canceled", "requested", and terminal states)."""
        await self.release(batch_id)  # items still staged (their API process died mid-release) are jobs first
        await self.redis.hset(self.keys.batch(batch_id), "cancel", "1")
        return await self._each_item(batch_id, "cancel", lambda jid: self.store.cancel_call(jid), None)

    async def retry(self, batch_id: str, *, include_canceled: bool = False) -> int:
        """Run the failed items (and the canceled ones, if asked) again as their next attempt. Returns how many."""
        states = {"failed", "canceled"} if include_canceled else {"failed"}
        counts = {_s(k): int(v) for k, v in (await self.redis.hgetall(self.keys.batch_counts(batch_id))).items()}
        if not any(counts.get(s, 0) > 0 for s in states):
            return 0
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.batch(batch_id), "finished_at")
        if include_canceled:
            pipe.hset(self.keys.batch(batch_id), "cancel", "0")
        for key in (self.keys.batch(batch_id), self.keys.batch_items(batch_id), self.keys.batch_counts(batch_id)):
            pipe.persist(key)
        await pipe.execute()
        outcomes = await self._each_item(batch_id, "retry", lambda jid: self.store.retry_call(jid), states)
        await self.redis.zadd(self.keys.runs, {f"batch:{batch_id}": 0}, nx=True)  # watch it again
        return outcomes.get("queued", 0)

    async def _each_item(self, batch_id: str, script: str, call: Any, only: set[str] | None) -> dict[str, int]:
        outcomes: dict[str, int] = {}
        start = 0
        while ids := await self.item_ids(batch_id, start, CHUNK):
            start += len(ids)
            if only is not None:  # read the states first: touch only the items in those states
                pipe = self.redis.pipeline(transaction=False)
                for jid in ids:
                    pipe.hget(self.keys.job(jid), "state")
                states = await pipe.execute()
                ids = [jid for jid, st in zip(ids, states, strict=True) if st is not None and _s(st) in only]
            if not ids:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for jid in ids:
                keys, args = call(jid)
                await self.store.scripts.run(script, keys, args, client=pipe)
            for res in await pipe.execute(raise_on_error=False):
                first = res[0] if isinstance(res, list) and res else res
                key = _s(first) if not isinstance(first, Exception) else "error"
                outcomes[key] = outcomes.get(key, 0) + 1
        return outcomes

    async def owner_batches(self, owner: str, *, before: float | None = None, limit: int = 20) -> list[str]:
        """The owner's batch ids, newest first."""
        top: Any = f"({before!r}" if before is not None else "+inf"
        res = await self.redis.zrevrangebyscore(self.keys.owner_batches(owner), top, "-inf", start=0, num=limit)
        return [_s(v) for v in res]

    async def backlog(self) -> int:
        """Batch items queued now, over all batches."""
        return max(0, int(await self.redis.get(self.keys.batch_backlog) or 0))
