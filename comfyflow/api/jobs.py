"""Jobs: submit, read, list, cancel, retry, and the synchronous generate."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow.api.auth_policy import apply_rate_decision
from comfyflow.api.errors import envelope
from comfyflow.api.http import json_body, json_response, query_int
from comfyflow.api.views import fast_job_view, job_view
from comfyflow.core.ratelimit import Decision
from comfyflow.core.store import job_from_hash
from comfyflow.core.submission import RateCount, Submitted
from comfyflow.core.webhooks.targets import check_target
from comfyflow.errors import Conflict, NotFound, ValidationError
from comfyflow.models import Job, JobState, Principal, parse_request

bp = Blueprint("jobs", url_prefix="/api/v1")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
SCAN_LIMIT = 2000  # jobs one list request reads at most; with a status filter the page may end early


def idempotency_scope(principal: Principal) -> str:
    """Where an Idempotency-Key is looked up: the credential the request came with (an API key; a JWT's
    ``jti``), so two keys of one user never replay each other's requests. Without a credential id (a JWT
    without ``jti``, or auth off) it is the user."""
    return f"{principal.id}/{principal.key_id}" if principal.key_id else principal.id


async def own_job(request: Request, job_id: str) -> Job:
    """The caller's job, or NotFound (also for other callers' jobs: their existence is not revealed)."""
    job = await request.app.ctx.rt.store.get(job_id) if JOB_ID.match(job_id) else None
    if job is None or job.owner != request.ctx.principal.id:
        raise NotFound(f"No job {job_id!r} among yours.", details={"job_id": job_id})
    return job


async def _submit(request: Request) -> Submitted:
    """Validate once, then one Redis round trip (rate limit, idempotency, admission, quota, job) for the job."""
    policy = request.app.ctx.policy
    principal = request.ctx.principal
    limit_rpm = getattr(request.ctx, "rate_limit", None)  # deferred by the policy to the submit script
    rate = RateCount(limit_rpm) if limit_rpm is not None else None
    try:
        body = json_body(request, max_bytes=request.app.ctx.settings.max_body_bytes)
        req = parse_request(body)
        await policy.check_request(principal, req)
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.match(key):
            raise ValidationError(
                "Idempotency-Key must be 1-255 printable ASCII characters without spaces.",
                details=[{"field": "Idempotency-Key", "value": key[:64]}],
            )
        if req.webhook:  # refused at once when it points at a private address (checked again at each delivery)
            await check_target(req.webhook, request.app.ctx.settings.webhooks.allow_networks)
        limit, day = await policy.daily_limit(principal)
        sub = await request.app.ctx.submitter.submit(
            req, owner=principal.id, idempotency_key=key, idempotency_scope=idempotency_scope(principal),
            daily_limit=limit, day=day, rate_limit=rate,
            extra={**policy.job_fields(principal), "request_id": request.ctx.request_id},
        )  # fmt: skip
    except Exception:  # ComfyflowError, pydantic.ValidationError, RateLimitedSubmit, ...: the request counts
        if rate is not None:
            if rate.rate is None:  # refused before the script counted the request: count it now (429 first)
                await policy.count_request(request, principal)
            else:
                apply_rate_decision(request, principal, _decision(rate.limit, rate.rate))
        raise
    if rate is not None and rate.rate is not None:
        apply_rate_decision(request, principal, _decision(rate.limit, rate.rate))
    return sub


def _decision(limit: int, rate: tuple[bool, int, int]) -> Decision:
    allowed, remaining, reset_ms = rate
    return Decision(allowed, limit, remaining, reset_ms / 1000)


@bp.post("/jobs")
async def create_job(request: Request) -> HTTPResponse:
    sub = await _submit(request)
    headers = {"Location": f"/api/v1/jobs/{sub.raw['id']}"}
    if sub.replayed:
        headers["Idempotent-Replayed"] = "true"
    view = fast_job_view(request, sub.raw) or await job_view(request, sub.job)
    return json_response(view, status=202, headers=headers)


@bp.get("/jobs/<job_id:str>")
async def get_job(request: Request, job_id: str) -> HTTPResponse:
    """The job: one round trip (its HGETALL, with the rate limit count when there is one); the view is built
    straight from the hash unless the job has artifacts to link."""
    store = request.app.ctx.rt.store
    raw: dict[str, str] = {}
    if getattr(request.ctx, "rate_limit", None) is not None:  # deferred by the policy: counted with the read
        read = store.keys.job(job_id) if JOB_ID.match(job_id) else None
        raw = await request.app.ctx.policy.count_request(request, request.ctx.principal, read) or {}
    elif JOB_ID.match(job_id):
        raw = await store.raw(job_id)
    if not raw or raw.get("owner", "local") != request.ctx.principal.id:
        raise NotFound(f"No job {job_id!r} among yours.", details={"job_id": job_id})
    return json_response(fast_job_view(request, raw) or await job_view(request, job_from_hash(raw)))


def _cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{job_id}".encode()).decode().rstrip("=")


def _parse_cursor(raw: str) -> tuple[float, str]:
    try:
        score, job_id = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode().split("|", 1)
        return float(score), job_id
    except Exception:
        raise ValidationError("cursor is not one this API gave out.", details=[{"field": "cursor"}]) from None


@bp.get("/jobs")
async def list_jobs(request: Request) -> HTTPResponse:
    """The caller's jobs, newest first, cursor-paginated, optionally filtered by status."""
    limit = query_int(request, "limit", 20, lo=1, hi=100)
    status = request.args.get("status")
    if status is not None and status not in {s.value for s in JobState}:
        raise ValidationError(
            f"status={status!r} is not a job state; use one of {', '.join(s.value for s in JobState)}.",
            details=[{"field": "status", "value": status}],
        )
    rt = request.app.ctx.rt
    zkey = rt.store.keys.owner_jobs(request.ctx.principal.id)
    max_score: Any = "+inf"
    after_id = None
    if request.args.get("cursor"):
        max_score, after_id = _parse_cursor(request.args.get("cursor"))  # args["cursor"] is a list in Sanic
    items: list[dict[str, Any]] = []
    next_cursor = None
    scanned = 0
    more = True
    while len(items) < limit and scanned < SCAN_LIMIT:
        batch = await rt.redis.zrevrangebyscore(zkey, max_score, "-inf", start=0, num=200, withscores=True)
        if not batch:
            more = False
            break
        progressed = False
        for member, score in batch:
            jid = member.decode()
            if after_id is not None:
                if score == max_score and jid >= after_id:
                    continue
            progressed = True
            scanned += 1
            max_score, after_id = score, jid
            job = await rt.store.get(jid)
            if job is None:
                await rt.redis.zrem(zkey, jid)
                continue
            if status and job.status.value != status:
                continue
            items.append(await job_view(request, job))
            if len(items) == limit:
                next_cursor = _cursor(score, jid)
                break
        if not progressed or len(batch) < 200:
            more = False
            break
    if next_cursor is None and more and after_id is not None:
        next_cursor = _cursor(max_score, after_id)  # stopped scanning, not at the end: go on from here
    return json({"items": items, "next_cursor": next_cursor, "limit": limit})


@bp.delete("/jobs/<job_id:str>")
async def cancel_job(request: Request, job_id: str) -> HTTPResponse:
    """Cancel: a queued job never starts; a running one is interrupted on its backend. Answers with the real
    state, waiting a few seconds for a running job to stop."""
    await own_job(request, job_id)
    rt = request.app.ctx.rt
    outcome = await rt.store.cancel(job_id)
    job = await rt.store.get(job_id)
    if outcome == "requested":
        job = await wait_terminal(request, job_id, timeout=5.0) or job
    assert job is not None
    return json(await job_view(request, job), status=200 if job.status.terminal else 202)


@bp.post("/jobs/<job_id:str>/retry")
async def retry_job(request: Request, job_id: str) -> HTTPResponse:
    await own_job(request, job_id)
    outcome, detail = await request.app.ctx.rt.store.retry(job_id)
    if outcome != "queued":
        raise Conflict(
            f"Job {job_id} is {detail}; only failed or canceled jobs can be retried.",
            details={"status": detail},
        )
    job = await request.app.ctx.rt.store.get(job_id)
    return json(await job_view(request, job), status=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


async def wait_terminal(request: Request, job_id: str, *, timeout: float) -> Job | None:
    """Wait for the job's ``done`` event (or a terminal state) up to ``timeout`` seconds."""
    rt = request.app.ctx.rt
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    after = "0-0"
    while True:
        job = await rt.store.get(job_id)
        if job is None or job.status.terminal:
            return job
        left = deadline - loop.time()
        if left <= 0:
            return None
        # blocks of at most 1 s: a blocking read must end well inside the Redis client's 5 s socket timeout
        events = await rt.events.read(job_id, after, block_ms=max(1, int(min(left, 1.0) * 1000)), count=100)
        if events:
            after = events[-1].id


@bp.post("/generate")
async def generate(request: Request) -> HTTPResponse:
    """Submit and wait up to COMFYFLOW_SYNC_TIMEOUT_SECONDS (or ?timeout= less) for the finished job; on
    timeout, 504 with the job id, and the job keeps running."""
    limit = request.app.ctx.settings.sync_timeout_seconds
    timeout = float(query_int(request, "timeout", int(limit), lo=1, hi=int(limit)))
    job = (await _submit(request)).job
    done = await wait_terminal(request, job.job_id, timeout=timeout)
    if done is None:
        return envelope(
            request, 504, "GENERATION_TIMEOUT",
            f"The job did not finish within {timeout:.0f}s; it keeps running. Poll /api/v1/jobs/{job.job_id}.",
            {"job_id": job.job_id, "location": f"/api/v1/jobs/{job.job_id}"},
            headers={"Location": f"/api/v1/jobs/{job.job_id}"},
        )  # fmt: skip
    return json(await job_view(request, done), headers={"Location": f"/api/v1/jobs/{job.job_id}"})
