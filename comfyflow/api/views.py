"""How jobs look over the API: the Job resource with fresh artifact links."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
from sanic import Request

from comfyflow.api.visibility import job_for
from comfyflow.models import Job


def base_url(request: Request) -> str:
    configured = request.app.ctx.settings.public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


async def job_view(request: Request, job: Job) -> dict[str, Any]:
    """The job resource as this caller may see it (comfyflow/api/visibility.py); artifact URLs are minted now,
    with the caller's link lifetime."""
    data = job.model_dump(mode="json", exclude={"worker", "owner"})
    if job.result is not None:
        links = request.app.ctx.links
        ttl = getattr(request.ctx, "url_ttl", None) or request.app.ctx.settings.artifact_url_seconds
        base = base_url(request)
        for art in data["result"]["artifacts"]:
            art["url"] = await links.url(base, art["key"], ttl)
        if data["result"].get("metadata_key"):
            data["result"]["metadata_url"] = await links.url(base, data["result"]["metadata_key"], ttl)
    job_for(request, data)
    data["links"] = {"self": f"/api/v1/jobs/{job.job_id}", "events": f"/api/v1/jobs/{job.job_id}/events"}
    return data


_PROGRESS = {"value": 0.0, "node": None, "node_type": None, "step": None, "max": None, "phase": "queued"}
_TIMES = ("created_at", "started_at", "render_started_at", "render_finished_at", "finished_at")


def _when(raw: dict[str, str], name: str) -> tuple[float | None, str | None]:
    value = raw.get(name)
    if not value:
        return None, None
    ts = float(value)
    return ts, datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _span(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    s = (datetime.fromtimestamp(b, UTC) - datetime.fromtimestamp(a, UTC)).total_seconds()
    return round(s, 4) if math.isfinite(s) else None


def fast_job_view(request: Request, raw: dict[str, str]) -> dict[str, Any] | None:
    """The job resource straight from its Redis hash, as :func:`job_view` serves it to this caller (tenants see
    no internals), without building the pydantic model (the API's hottest path: status polls and submits). None
    for a job with a result (its artifact links are minted by ``job_view``) or a hash this function cannot read."""
    data = raw_job_view(raw)
    return None if data is None else job_for(request, data)


def raw_job_view(raw: dict[str, str]) -> dict[str, Any] | None:
    """:func:`fast_job_view` before the caller's visibility is applied."""
    if raw.get("result"):
        return None
    try:
        progress = {**_PROGRESS, **orjson.loads(raw.get("progress") or "{}")}
        progress["value"] = float(progress["value"])
        error = orjson.loads(raw["error"]) if raw.get("error") else None
        if error is not None:
            error = {"code": error["code"], "message": error["message"], "details": error.get("details"),
                     "transient": bool(error.get("transient", False))}  # fmt: skip
        times = {name: _when(raw, name) for name in _TIMES}
        created = times["created_at"]
        if created[0] is None:
            return None
        state = raw["state"]
        finished = times["finished_at"][0]
        job_id = raw["id"]
        return {
            "job_id": job_id,
            "status": state,
            "attempt": int(raw.get("attempt", 1)),
            "max_attempts": int(raw.get("max_attempts", 1)),
            "priority": raw.get("priority", "normal"),
            "request": orjson.loads(raw["request"]) if raw.get("request") else {},
            "labels": orjson.loads(raw["labels"]) if raw.get("labels") else [],
            "progress": progress,
            "result": None,
            "error": error,
            "backend": raw.get("backend") or None,
            "cancel_requested": raw.get("cancel") == "1",
            "flow_run_id": raw.get("flow_run_id") or None,
            "batch_id": raw.get("batch") or None,
            **{name: times[name][1] for name in _TIMES},
            "durations": {
                "queue_wait": _span(created[0], times["render_started_at"][0]),
                "render": _span(times["render_started_at"][0], times["render_finished_at"][0]),
                "store": _span(times["render_finished_at"][0], finished if state == "succeeded" else None),
                "total": _span(created[0], finished),
            },
            "links": {"self": f"/api/v1/jobs/{job_id}", "events": f"/api/v1/jobs/{job_id}/events"},
        }
    except (KeyError, TypeError, ValueError):
        return None
