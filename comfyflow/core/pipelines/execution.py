"""Executing pipeline runs and watching batches, as plain async functions (the Prefect run plane in
``flows/pipelines.py`` wraps the same functions in flow runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import is_dataclass
from typing import Any

import pydantic
import structlog
from pydantic import BaseModel

from comfyflow.core.batches import Batch, BatchStore
from comfyflow.core.pipelines import registry
from comfyflow.core.pipelines.dsl import (
    Pipeline,
    PipelineContext,
    RunCanceled,
    StepOutput,
    StepWrapper,
    _plain,
)
from comfyflow.core.pipelines.plane import Leases, RunPlane, runner_name
from comfyflow.core.pipelines.runs import PipelineRun, PipelineRunStore, RunState, run_from_hash
from comfyflow.core.runtime import Runtime
from comfyflow.errors import ComfyflowError
from comfyflow.models import ErrorInfo

log = structlog.get_logger("comfyflow.pipelines")


def jsonable(value: Any) -> Any:
    """A pipeline's return value as JSON: step outputs become their summaries."""

    def default(obj: Any) -> Any:
        if isinstance(obj, StepOutput):
            return obj.summary()
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        if is_dataclass(obj):
            return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
        return str(obj)

    return json.loads(json.dumps(value, default=default))


async def context_for(
    runtime: Runtime, run_id: str, *, wrap_step: StepWrapper = _plain
) -> tuple[PipelineContext, PipelineRun, dict[str, str]]:
    store = PipelineRunStore(runtime.store)
    raw = await store.raw(run_id)
    run = run_from_hash(raw)
    ctx = PipelineContext(
        runtime, run_id, run.pipeline, owner=run.owner, priority=run.priority, labels=run.labels, role=run.role,
        retry_window=run.retry_window_seconds, resume_failed=raw.get("resume") == "1", wrap_step=wrap_step,
        job_extra=json.loads(raw.get("job_extra") or "{}"),
        daily_quota=(raw["quota_key"], int(raw["quota_limit"])) if raw.get("quota_key") else None,
    )  # fmt: skip
    return ctx, run, raw


async def execute(
    runtime: Runtime,
    run_id: str,
    *,
    pipeline: Pipeline | None = None,
    wrap_step: StepWrapper = _plain,
    body: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None,
) -> PipelineRun:
    """Run (or resume) pipeline run ``run_id`` to its end and record how it ended.

    Args:
        pipeline: the pipeline, when it is not registered (a run started from Python).
        wrap_step: wraps each step (Prefect makes each a task run).
        body: wraps the pipeline function's run (Prefect makes it a flow run); it must await what it is given.
    Raises:
        asyncio.CancelledError: when this runner is stopped; the run stays unfinished for another to resume.
    """
    store = PipelineRunStore(runtime.store)
    ctx, run, raw = await context_for(runtime, run_id, wrap_step=wrap_step)
    if run.status.terminal:
        return run
    try:
        pipe = pipeline or registry.get(run.pipeline)
        params = pipe.validate(run.params)
    except (ComfyflowError, pydantic.ValidationError) as exc:
        await store.set_status(run_id, RunState.FAILED, error=_error(exc).model_dump(), message=str(exc)[:500])
        return await _get(store, run_id)
    fields: dict[str, Any] = {"message": ""}
    if not raw.get("started_at"):
        fields["started_at"] = repr(runtime.store.clock())
    await store.set_status(run_id, RunState.RUNNING, **fields)
    log.info("pipeline run started", run_id=run_id, pipeline=run.pipeline, resumed=bool(raw.get("started_at")))

    async def call() -> Any:
        return await pipe.fn(ctx, params)

    try:
        result = await (body(call) if body is not None else call())
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if _canceled(exc):
            for job_id in (await store.steps(run_id)).values():
                with contextlib.suppress(Exception):
                    await runtime.store.cancel(job_id)
            await store.set_status(run_id, RunState.CANCELED, message="canceled", resume="0")
            return await _get(store, run_id)
        err = _error(exc)
        log.warning("pipeline run failed", run_id=run_id, code=err.code, error=err.message)
        await store.set_status(run_id, RunState.FAILED, error=err.model_dump(), message=err.message, resume="0")
    else:
        await store.set_status(run_id, RunState.SUCCEEDED, result=jsonable(result), message="", resume="0")
        log.info("pipeline run succeeded", run_id=run_id, pipeline=run.pipeline)
    return await _get(store, run_id)


def _canceled(exc: BaseException) -> bool:
    if isinstance(exc, ExceptionGroup):
        return any(_canceled(e) for e in exc.exceptions)
    return isinstance(exc, RunCanceled) or isinstance(exc.__cause__, RunCanceled)


def _error(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, ExceptionGroup) and exc.exceptions:  # a step of ctx.all() failed
        return _error(exc.exceptions[0])
    if isinstance(exc, ComfyflowError):
        return ErrorInfo(code=exc.code, message=exc.message, details=exc.details)
    if isinstance(exc, pydantic.ValidationError):
        return ErrorInfo(code="VALIDATION_ERROR", message=str(exc), details=exc.errors(include_url=False))
    return ErrorInfo(code="PIPELINE_ERROR", message=f"the pipeline raised {type(exc).__name__}: {exc}")


async def _get(store: PipelineRunStore, run_id: str) -> PipelineRun:
    run = await store.get(run_id)
    assert run is not None
    return run


async def execute_here(
    runtime: Runtime, pipeline: Pipeline, params: BaseModel, *, owner: str, **options: Any
) -> PipelineRun:
    """Create a run held by this process and execute it here (``Pipeline.run``)."""
    leases = Leases(runtime, runner_name())
    store = PipelineRunStore(runtime.store)
    run = await store.create(
        pipeline.name, params.model_dump(mode="json"), owner=owner, runner=leases.runner, **options
    )
    member = f"prun:{run.run_id}"

    async def beat() -> None:
        while True:
            await asyncio.sleep(leases.lease_ms / 3000)
            with contextlib.suppress(Exception):
                await leases.beat(member)

    beating = asyncio.create_task(beat())
    try:
        return await execute(runtime, run.run_id, pipeline=pipeline)
    finally:
        beating.cancel()
        with contextlib.suppress(BaseException):
            await beating
        with contextlib.suppress(Exception):
            await leases.done(member)


async def watch_batch(
    runtime: Runtime,
    batch_id: str,
    *,
    every: float = 1.0,
    on_progress: Callable[[Batch], Awaitable[None]] | None = None,
) -> Batch | None:
    """Wait until every item of the batch has finished (reporting progress as it changes); returns the batch."""
    batches = BatchStore(runtime.store)
    # Finishes the release of the batch's items if the API process that committed it died in the middle.
    await batches.release(batch_id)
    last: tuple[Any, ...] | None = None
    while True:
        batch = await batches.get(batch_id)
        if batch is None:
            return None
        seen = tuple(sorted(batch.counts.items()))
        if on_progress is not None and seen != last:
            await on_progress(batch)
        last = seen
        if batch.status not in ("queued", "running"):
            return batch
        await asyncio.sleep(every)


def plain_plane(runtime: Runtime, *, concurrency: int = 64) -> RunPlane:
    """The run plane without Prefect: pipeline runs executed in this process, batches watched until done."""

    async def batch(batch_id: str) -> None:
        await watch_batch(runtime, batch_id)

    async def prun(run_id: str) -> None:
        await execute(runtime, run_id)

    return RunPlane(runtime, {"batch": batch, "prun": prun}, concurrency=concurrency)
