"""Pipelines: list the registered ones, start runs by name with parameters, follow, cancel and retry runs.

The API only records a run (Redis); the workers' run plane executes it, each step a job.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow.api.http import json_body, query_int
from comfyflow.api.views import job_view
from comfyflow.api.visibility import run_for
from comfyflow.core.batches import Label
from comfyflow.core.pipelines import PipelineRun, PipelineRunStore, registry
from comfyflow.core.submission import quota_key
from comfyflow.errors import Conflict, Forbidden, NotFound
from comfyflow.models import Priority, Role

bp = Blueprint("pipelines", url_prefix="/api/v1")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class RunRequest(BaseModel):
    """Body of ``POST /api/v1/pipelines/<name>/runs``."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict, description="The pipeline's parameters.")
    priority: Priority = Priority.NORMAL
    labels: list[Label] = Field(default_factory=list, max_length=10)
    retry_window_seconds: float = Field(
        default=600.0, ge=0, le=7 * 86400, description="How long a failed step waits for a retry before the run fails."
    )


def runs(request: Request) -> PipelineRunStore:
    return request.app.ctx.pipeline_runs  # type: ignore[no-any-return]  # opened once with the runtime (app.py)


async def own_run(request: Request, run_id: str) -> PipelineRun:
    run = await runs(request).get(run_id) if RUN_ID.match(run_id) else None
    if run is None or run.owner != request.ctx.principal.id:
        raise NotFound(f"No pipeline run {run_id!r} among yours.", details={"run_id": run_id})
    return run


async def run_view(request: Request, run: PipelineRun, *, steps: bool = True) -> dict[str, Any]:
    data = run_for(request, run.model_dump(mode="json", exclude={"owner"}))
    data["links"] = {"self": f"/api/v1/pipeline-runs/{run.run_id}", "pipeline": f"/api/v1/pipelines/{run.pipeline}"}
    if steps:
        store = request.app.ctx.rt.store
        items = []
        for name, job_id in (await runs(request).steps(run.run_id)).items():
            job = await store.get(job_id)
            if job is None:
                items.append({"step": name, "job_id": job_id, "status": "expired"})
                continue
            full = await job_view(request, job)
            items.append({"step": name, "job_id": job_id, "status": full["status"], "attempt": full["attempt"],
                          "progress": full["progress"]["value"], "result": full["result"], "error": full["error"],
                          "created_at": full["created_at"], "links": full["links"]})  # fmt: skip
        data["steps"] = sorted(items, key=lambda s: s.get("created_at") or "")
    return data


@bp.get("/pipelines")
async def list_pipelines(request: Request) -> HTTPResponse:
    """The registered pipelines, with their parameters' JSON schema."""
    return json({"items": [p.describe() for p in registry.available().values()]})


@bp.get("/pipelines/<name:str>")
async def get_pipeline(request: Request, name: str) -> HTTPResponse:
    return json(registry.get(name).describe())


@bp.post("/pipelines/<name:str>/runs")
async def start_run(request: Request, name: str) -> HTTPResponse:
    """Start a run of pipeline ``name``: validated here, executed by the workers."""
    ctx = request.app.ctx
    pipe = registry.get(name)
    body = RunRequest.model_validate(json_body(request, max_bytes=ctx.settings.max_body_bytes))
    principal = request.ctx.principal
    if pipe.internal_only and principal.role != Role.INTERNAL:
        raise Forbidden(
            f"Pipeline {name!r} is for INTERNAL callers; your role is {principal.role.value}.",
            details={"pipeline": name, "role": principal.role.value},
        )
    params = pipe.validate(body.params)
    limit, day = await ctx.policy.daily_limit(principal)
    quota = (quota_key(ctx.rt.store.keys.prefix, principal.id, day), limit) if limit is not None else None
    run = await runs(request).create(
        name, params.model_dump(mode="json"), owner=principal.id, role=principal.role.value, priority=body.priority,
        labels=body.labels, retry_window=body.retry_window_seconds, job_extra=ctx.policy.job_fields(principal),
        daily_quota=quota,
    )  # fmt: skip
    location = f"/api/v1/pipeline-runs/{run.run_id}"
    return json(await run_view(request, run, steps=False), status=202, headers={"Location": location})


@bp.get("/pipeline-runs/<run_id:str>")
async def get_run(request: Request, run_id: str) -> HTTPResponse:
    """The run: status, what it waits for, its result, and each step's job (status and artifact links)."""
    return json(await run_view(request, await own_run(request, run_id)))


@bp.get("/pipeline-runs")
async def list_runs(request: Request) -> HTTPResponse:
    """The caller's pipeline runs, newest first."""
    limit = query_int(request, "limit", 20, lo=1, hi=100)
    out = []
    for run_id in await runs(request).owner_runs(request.ctx.principal.id, limit=limit):
        run = await runs(request).get(run_id)
        if run is not None:
            out.append(await run_view(request, run, steps=False))
    return json({"items": out, "limit": limit})


@bp.delete("/pipeline-runs/<run_id:str>")
async def cancel_run(request: Request, run_id: str) -> HTTPResponse:
    """Cancel the run and its unfinished steps."""
    run = await own_run(request, run_id)
    if run.status.terminal:
        raise Conflict(f"Pipeline run {run_id} is {run.status.value}; it cannot be canceled.")
    await runs(request).cancel(run_id)
    return json(await run_view(request, await own_run(request, run_id)), status=202)


@bp.post("/pipeline-runs/<run_id:str>/retry")
async def retry_run(request: Request, run_id: str) -> HTTPResponse:
    """Resume a failed or canceled run: finished steps are reused, failed steps run again."""
    run = await own_run(request, run_id)
    if not await runs(request).retry(run_id):
        raise Conflict(
            f"Pipeline run {run_id} is {run.status.value}; only failed or canceled runs can be retried.",
            details={"status": run.status.value},
        )
    location = f"/api/v1/pipeline-runs/{run_id}"
    return json(await run_view(request, await own_run(request, run_id)), status=202, headers={"Location": location})
