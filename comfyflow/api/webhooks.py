"""A job's webhook deliveries: the log of every try, and replay."""

from __future__ import annotations

import re

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow.api.jobs import own_job
from comfyflow.core.webhooks import outbox_for
from comfyflow.errors import NotFound

bp = Blueprint("webhooks", url_prefix="/api/v1")
DELIVERY_ID = re.compile(r"^msg_[0-9a-f]{32}$")


@bp.get("/jobs/<job_id:str>/webhooks")
async def deliveries(request: Request, job_id: str) -> HTTPResponse:
    """Every delivery of the job's webhook (oldest first), each with all its tries."""
    job = await own_job(request, job_id)
    items = await outbox_for(request.app.ctx.rt).for_job(job.job_id)
    return json({"job_id": job.job_id, "webhook": job.request.get("webhook"), "items": items})


@bp.post("/jobs/<job_id:str>/webhooks/<delivery_id:str>/replay")
async def replay(request: Request, job_id: str, delivery_id: str) -> HTTPResponse:
    """Send a delivery again (same ``webhook-id``, signed afresh); its tries are added to its log."""
    job = await own_job(request, job_id)
    box = outbox_for(request.app.ctx.rt)
    raw = await box.get(delivery_id) if DELIVERY_ID.match(delivery_id) else {}
    if not raw or raw.get("job_id") != job.job_id:
        raise NotFound(
            f"No webhook delivery {delivery_id!r} for job {job_id}; list them with GET /api/v1/jobs/{job_id}/webhooks.",
            details={"job_id": job_id, "delivery_id": delivery_id},
        )
    await box.replay(delivery_id)
    items = [d for d in await box.for_job(job.job_id) if d["delivery_id"] == delivery_id]
    return json(items[0], status=202, headers={"Location": f"/api/v1/jobs/{job_id}/webhooks"})
