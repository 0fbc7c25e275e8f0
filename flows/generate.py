"""The ``generate`` flow: one attempt of one job, as four coarse tasks over the plain steps in core.

Each attempt is a flow run created from the ``generate`` deployment and executed in-process by comfyflow's
executor (``flows/executor.py``), so the Prefect UI shows it (with Retry and Cancel) without a subprocess per
run. The tasks pass only small references: no image bytes are task results, and nothing is cached or persisted.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from comfyflow.core.attempt import AttemptContext
from comfyflow.core.slots import SlotLease
from comfyflow.core.steps import Prepared, Rendered, acquire_step, render_step, store_step, validate_step
from comfyflow.errors import ComfyflowError
from comfyflow.models import JobResult

#: Attempts this process is executing, by (job_id, attempt). The executor registers one before running its flow.
ACTIVE: dict[tuple[str, int], AttemptContext] = {}

TASK_OPTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False, "retries": 0}


@task(name="validate", **TASK_OPTS)
async def validate(ctx: AttemptContext) -> Prepared:
    return await validate_step(ctx)


@task(name="acquire_slot", **TASK_OPTS)
async def acquire_slot(ctx: AttemptContext, prepared: Prepared) -> SlotLease | None:
    return await acquire_step(ctx, prepared)


@task(name="render", **TASK_OPTS)
async def render(ctx: AttemptContext, prepared: Prepared, lease: SlotLease | None) -> Rendered:
    return await render_step(ctx, prepared, lease)


@task(name="store", **TASK_OPTS)
async def store(ctx: AttemptContext, prepared: Prepared, rendered: Rendered) -> JobResult:
    return await store_step(ctx, prepared, rendered)


@flow(name="generate", persist_result=False, retries=0, validate_parameters=False)
async def generate(job_id: str, attempt: int) -> dict[str, Any]:
    """Run attempt ``attempt`` of job ``job_id``: validate -> acquire_slot -> render -> store."""
    ctx = ACTIVE.get((job_id, attempt))
    if ctx is None:
        raise ComfyflowError(
            f"Attempt {attempt} of job {job_id} is not held by this process. The generate flow is executed by "
            "comfyflow's workers (comfyflow worker / comfyflow serve); retry the job from the Prefect UI or with "
            "POST /api/v1/jobs/{id}/retry instead of running this deployment with a Prefect worker."
        )
    logger = get_run_logger()
    logger.info("job %s attempt %s (request %s)", job_id, attempt, ctx.raw.get("request_id") or "-")
    prepared = await validate(ctx)
    lease = await acquire_slot(ctx, prepared)
    await _tag_backend(lease.backend if lease else prepared.adopt_backend)
    rendered = await render(ctx, prepared, lease)
    result = await store(ctx, prepared, rendered)
    logger.info(
        "job %s attempt %s: %d artifact(s) from %s%s",
        job_id, attempt, len(result.artifacts), rendered.backend, " (adopted)" if rendered.adopted else "",
    )  # fmt: skip
    ctx.result = result
    return {"artifacts": [a.key for a in result.artifacts], "backend": rendered.backend, "seed": result.seed}


async def _tag_backend(backend: str | None) -> None:
    """Tag the run with the backend it renders on, so the UI can filter runs by GPU host."""
    run_ctx = FlowRunContext.get()
    if backend is None or run_ctx is None or run_ctx.flow_run is None:
        return
    tags = [*run_ctx.flow_run.tags, f"backend:{urlsplit(backend).netloc or backend}"]
    try:
        async with get_client() as client:
            await client.update_flow_run(run_ctx.flow_run.id, tags=tags)
    except Exception as exc:  # visibility only: never fail a render over a tag
        get_run_logger().warning("could not tag the run with its backend: %s", exc)
