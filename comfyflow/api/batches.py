"""Batches: submit many jobs at once (a list, or a sweep expanded as a cartesian product), follow, cancel, retry."""

from __future__ import annotations

import base64
import hashlib
import json as _json
import re
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow.api.http import json_body, query_int
from comfyflow.api.jobs import IDEMPOTENCY_KEY, idempotency_scope
from comfyflow.api.views import job_view
from comfyflow.api.visibility import run_for
from comfyflow.core.batches import Batch, BatchRequest, BatchStore, expand, new_batch_id
from comfyflow.core.submission import quota_key
from comfyflow.errors import Conflict, IdempotencyConflict, NotFound, Overloaded, QuotaExceeded, ValidationError
from comfyflow.models import Img2ImgRequest, Job, JobState

bp = Blueprint("batches", url_prefix="/api/v1")
BATCH_ID = re.compile(r"^[0-9a-f]{32}$")
#: Items a status-filtered page reads at most before it answers (with a cursor to go on).
SCAN_LIMIT = 2000


def batches(request: Request) -> BatchStore:
    return request.app.ctx.batches  # type: ignore[no-any-return]  # opened once with the runtime (app.py)


async def own_batch(request: Request, batch_id: str) -> Batch:
    """The caller's batch, or NotFound (also for other callers' batches: their existence is not revealed)."""
    batch = await batches(request).get(batch_id) if BATCH_ID.match(batch_id) else None
    if batch is None or batch.owner != request.ctx.principal.id:
        raise NotFound(f"No batch {batch_id!r} among yours.", details={"batch_id": batch_id})
    return batch


def batch_view(request: Request, batch: Batch) -> dict[str, Any]:
    data = run_for(request, batch.model_dump(mode="json", exclude={"owner", "sweep"}))  # no flow run id for tenants
    # the swept fields and how many values each has (the values themselves can be long prompts)
    data["axes"] = {name: len(values) for name, values in (batch.sweep or {}).items()}
    base = f"/api/v1/batches/{batch.batch_id}"
    data["links"] = {"self": base, "retry": f"{base}/retry", "grid": f"{base}/grid"}
    return data


async def item_view(request: Request, index: int, job: Job) -> dict[str, Any]:
    """One item, compact: its job id, state and artifact links (the full job is at ``links.self``)."""
    full = await job_view(request, job)
    return {
        "index": index,
        "job_id": job.job_id,
        "status": full["status"],
        "attempt": full["attempt"],
        "progress": full["progress"]["value"],
        "result": full["result"],
        "error": full["error"],
        "links": full["links"],
    }


def _policy_key(req: Any) -> str:
    """Requests that differ only in seed or labels get the same answer from the policy: check each shape once."""
    body = req.model_dump(mode="json", exclude={"seed", "labels"})
    return _json.dumps(body, sort_keys=True, separators=(",", ":"))


@bp.post("/batches")
async def create_batch(request: Request) -> HTTPResponse:
    """Queue every item of a batch at once (one atomic script), each a normal job with its own life."""
    ctx = request.app.ctx
    settings = ctx.settings
    body = json_body(request, max_bytes=max(settings.max_body_bytes, settings.max_upload_bytes))
    spec = BatchRequest.model_validate(body)
    principal = request.ctx.principal
    batch_id = new_batch_id()
    items = expand(spec, batch_id=batch_id, max_items=settings.max_batch_items)
    await ctx.policy.check_batch(principal, len(items))  # the role's items per batch (403)
    checked: set[str] = set()
    uploads: set[str] = set()
    for req in items:
        key = _policy_key(req)
        if key not in checked:
            checked.add(key)
            await ctx.policy.check_request(principal, req)
        if isinstance(req, Img2ImgRequest):
            uploads.add(req.init_image)
    for upload_id in sorted(uploads):
        if await ctx.rt.storage.info(f"uploads/{principal.id}/{upload_id}") is None:
            raise ValidationError(
                f"init_image {upload_id!r} is not one of your uploads; upload it with POST /api/v1/uploads first.",
                details=[{"field": "init_image", "value": upload_id}],
            )
    store = batches(request)
    backlog = await store.backlog()
    if backlog + len(items) > settings.max_batch_backlog:
        raise Overloaded(
            f"{backlog} batch items are queued; {len(items)} more would pass the limit of "
            f"{settings.max_batch_backlog} (COMFYFLOW_MAX_BATCH_BACKLOG). Retry later or send a smaller batch.",
            retry_after=30.0,
            details={"batch_backlog": backlog, "items": len(items), "limit": settings.max_batch_backlog},
        )
    idem = None
    idem_header = request.headers.get("idempotency-key")
    if idem_header is not None:
        if not IDEMPOTENCY_KEY.match(idem_header):
            raise ValidationError(
                "Idempotency-Key must be 1-255 printable ASCII characters without spaces.",
                details=[{"field": "Idempotency-Key", "value": idem_header[:64]}],
            )
        canonical = _json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        fp = hashlib.sha256(canonical.encode()).hexdigest()[:32]
        idem = (ctx.submitter.idem_key(idempotency_scope(principal), f"batch:{idem_header}"), fp)
    limit, day = await ctx.policy.daily_limit(principal)
    quota = (quota_key(ctx.rt.store.keys.prefix, principal.id, day), limit) if limit is not None else None
    created = await store.create(
        items, owner=principal.id, batch_id=batch_id, name=spec.name, priority=spec.priority, labels=spec.labels,
        role=principal.role.value, extra=ctx.policy.job_fields(principal), daily_quota=quota, idempotency=idem,
        sweep=spec.sweep if spec.base is not None else None,
    )  # fmt: skip
    if created.outcome == "quota":
        raise QuotaExceeded(
            f"This batch has {len(items)} items and {max(0, (limit or 0) - created.used)} of your daily quota of "
            f"{limit} jobs are left; it resets at 00:00 UTC. Send a smaller batch.",
            details={"limit": limit, "used": created.used, "items": len(items)},
        )
    if created.outcome == "mismatch":
        raise IdempotencyConflict(
            "This Idempotency-Key was used with a different batch; use a new key for a new batch.",
            details={"idempotency_key": idem_header, "batch_id": created.batch_id},
        )
    batch = await own_batch(request, created.batch_id)
    headers = {"Location": f"/api/v1/batches/{batch.batch_id}"}
    if created.outcome == "existing":
        headers["Idempotent-Replayed"] = "true"
    return json(batch_view(request, batch), status=202, headers=headers)


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i{index}".encode()).decode().rstrip("=")


def _parse_cursor(raw: str) -> int:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        if text[0] != "i" or int(text[1:]) < 0:
            raise ValueError(text)
        return int(text[1:])
    except Exception:
        raise ValidationError("cursor is not one this API gave out.", details=[{"field": "cursor"}]) from None


@bp.get("/batches/<batch_id:str>")
async def get_batch(request: Request, batch_id: str) -> HTTPResponse:
    """The batch: status, counts by job state, progress, and a page of its items (``limit``, ``cursor``,
    optionally only items in one ``status``)."""
    batch = await own_batch(request, batch_id)
    limit = query_int(request, "limit", 50, lo=0, hi=500)
    status = request.args.get("status")
    if status is not None and status not in {s.value for s in JobState}:
        raise ValidationError(
            f"status={status!r} is not a job state; use one of {', '.join(s.value for s in JobState)}.",
            details=[{"field": "status", "value": status}],
        )
    start = _parse_cursor(request.args.get("cursor")) if request.args.get("cursor") else 0
    store = batches(request)
    items: list[dict[str, Any]] = []
    index = start
    while limit and len(items) < limit and index < batch.total and index - start < SCAN_LIMIT:
        want = limit - len(items) if status is None else 200
        ids = await store.item_ids(batch_id, index, want)
        if not ids:
            break
        for offset, job in enumerate(await store.jobs(ids)):
            if len(items) == limit:
                break
            pos = index + offset
            if job is not None and (status is None or job.status.value == status):
                items.append(await item_view(request, pos, job))
            last = pos
        index = last + 1
    data = batch_view(request, batch)
    data["items"] = items
    data["next_cursor"] = _cursor(index) if limit and index < batch.total else None
    data["limit"] = limit
    return json(data)


@bp.get("/batches")
async def list_batches(request: Request) -> HTTPResponse:
    """The caller's batches, newest first (``limit``, ``cursor``)."""
    limit = query_int(request, "limit", 20, lo=1, hi=100)
    before = None
    if request.args.get("cursor"):
        try:
            before = float(base64.urlsafe_b64decode(request.args.get("cursor") + "==").decode())
        except Exception:
            raise ValidationError("cursor is not one this API gave out.", details=[{"field": "cursor"}]) from None
    store = batches(request)
    out = []
    last: Batch | None = None
    for bid in await store.owner_batches(request.ctx.principal.id, before=before, limit=limit):
        batch = await store.get(bid)
        if batch is None:  # its records expired
            await store.redis.zrem(store.keys.owner_batches(request.ctx.principal.id), bid)
            continue
        out.append(batch_view(request, batch))
        last = batch
    next_cursor = None
    if len(out) == limit and last is not None:
        stamp = repr(last.created_at.timestamp())
        next_cursor = base64.urlsafe_b64encode(stamp.encode()).decode().rstrip("=")
    return json({"items": out, "next_cursor": next_cursor, "limit": limit})


@bp.delete("/batches/<batch_id:str>")
async def cancel_batch(request: Request, batch_id: str) -> HTTPResponse:
    """Cancel the items not finished yet: queued ones never start, running ones are interrupted."""
    await own_batch(request, batch_id)
    outcomes = await batches(request).cancel(batch_id)
    data = batch_view(request, await own_batch(request, batch_id))
    data["canceled"] = outcomes
    return json(data, status=202 if data["status"] in ("queued", "running") else 200)


@bp.post("/batches/<batch_id:str>/retry")
async def retry_batch(request: Request, batch_id: str) -> HTTPResponse:
    """Run the failed items again (and the canceled ones with ``?canceled=true``)."""
    await own_batch(request, batch_id)
    include_canceled = (request.args.get("canceled") or "").lower() in ("1", "true", "yes")
    retried = await batches(request).retry(batch_id, include_canceled=include_canceled)
    if not retried:
        which = "failed or canceled" if include_canceled else "failed"
        raise Conflict(f"Batch {batch_id} has no {which} items to retry.", details={"batch_id": batch_id})
    data = batch_view(request, await own_batch(request, batch_id))
    data["retried"] = retried
    return json(data, status=202, headers={"Location": f"/api/v1/batches/{batch_id}"})
