"""How jobs look over the API: the Job resource with fresh artifact links."""

from __future__ import annotations

from typing import Any

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
