"""comfyflow's executor: each attempt a flow run created from the ``generate`` deployment, run in-process.

Prefect's runners and workers start a subprocess per run (3-12 s each); this executor runs the flow with
Prefect's async engine in the worker's own event loop, so Prefect costs a few round trips per attempt, which
overlap rendering because a worker claims more jobs than there are GPU slots. A Retry or Cancel pressed in the
Prefect UI is picked up by :func:`watch_ui` and becomes a comfyflow retry or cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from uuid import UUID

import structlog
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.flow_engine import run_flow_async
from prefect.states import Cancelled, Crashed

from comfyflow.core.attempt import AttemptContext
from comfyflow.core.steps import run_attempt
from comfyflow.core.store import JobStore
from comfyflow.models import JobResult
from flows.artifacts import publish_attempt, spawn
from flows.generate import ACTIVE, generate

log = structlog.get_logger("comfyflow.executor")

DEPLOYMENT_NAME = "generate"


class PrefectExecutor:
    """A worker ``Runner`` that runs each attempt as a Prefect flow run. Open with ``async with``."""

    def __init__(self) -> None:
        self.client: PrefectClient | None = None
        self.deployment_id: UUID | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> PrefectExecutor:
        self.client = get_client()
        await self.client.__aenter__()
        deployment = await generate.to_deployment(name=DEPLOYMENT_NAME, description=generate.__doc__)
        self.deployment_id = await deployment.apply()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.client is not None:
            await self.client.__aexit__(*exc)

    async def __call__(self, ctx: AttemptContext) -> JobResult:
        assert self.client is not None and self.deployment_id is not None
        job, attempt = ctx.job, ctx.claim.attempt
        try:
            flow_run = await self._flow_run_for(ctx)
        except Exception as exc:  # Prefect down: the job still runs; only its visibility suffers
            log.warning("Prefect unavailable, running attempt without a flow run", job_id=job.job_id, error=str(exc))
            return await run_attempt(ctx)
        await ctx.update(flow_run_id=str(flow_run.id))
        ACTIVE[(job.job_id, attempt)] = ctx
        try:
            await run_flow_async(generate, flow_run=flow_run, parameters={"job_id": job.job_id, "attempt": attempt})
        except asyncio.CancelledError:
            if ctx.stop_reason == "canceled":
                await self._force(flow_run.id, Cancelled(message="canceled by request"))
            elif ctx.stop_reason in ("lost", "shutdown"):
                await self._force(flow_run.id, Crashed(message=f"attempt released ({ctx.stop_reason})"))
            raise
        finally:
            ACTIVE.pop((job.job_id, attempt), None)
        assert ctx.result is not None
        spawn(publish_attempt(self.client, flow_run.id, ctx))  # Prefect artifacts, off the render path
        return ctx.result

    async def _flow_run_for(self, ctx: AttemptContext) -> Any:
        assert self.client is not None and self.deployment_id is not None
        job, attempt = ctx.job, ctx.claim.attempt
        previous = ctx.raw.get("flow_run_id")
        reuse = ctx.raw.get("retry_flow_run_id")
        if previous and previous != reuse:
            task = asyncio.create_task(self._crash_if_running(previous, attempt - 1))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if reuse:  # the UI's Retry: run the same flow run again (it waits in AwaitingRetry)
            return await self.client.read_flow_run(UUID(reuse))
        tags = [f"priority:{job.priority.value}", f"owner:{job.owner}", *[f"label:{lab}" for lab in job.labels[:5]]]
        if ctx.raw.get("request_id"):  # the API request that submitted the job (X-Request-ID), findable in the UI
            tags.append(f"request:{ctx.raw['request_id']}")
        return await self.client.create_flow_run_from_deployment(
            self.deployment_id,
            parameters={"job_id": job.job_id, "attempt": attempt},
            name=f"{job.job_id[:12]}-attempt-{attempt}",
            tags=tags,
            idempotency_key=f"{job.job_id}:{attempt}",
        )

    async def _crash_if_running(self, flow_run_id: str, attempt: int) -> None:
        """A previous attempt's run whose worker died stays "Running" in Prefect: mark it crashed."""
        assert self.client is not None
        with contextlib.suppress(Exception):
            run = await self.client.read_flow_run(UUID(flow_run_id))
            if run.state is not None and not run.state.is_final():
                await self._force(run.id, Crashed(message=f"worker lost during attempt {attempt}; job reclaimed"))

    async def _force(self, flow_run_id: UUID, state: Any) -> None:
        assert self.client is not None
        with contextlib.suppress(Exception):
            await asyncio.shield(self.client.set_flow_run_state(flow_run_id, state, force=True))


async def watch_ui(executor: PrefectExecutor, store: JobStore, stop: asyncio.Event, interval: float = 1.0) -> None:
    """Turn Retry and Cancel pressed in the Prefect UI on ``generate`` runs into comfyflow retries and cancels."""
    assert executor.client is not None and executor.deployment_id is not None
    flt = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["AwaitingRetry", "Cancelling"])))
    dflt = DeploymentFilter(id=DeploymentFilterId(any_=[executor.deployment_id]))
    while not stop.is_set():
        try:
            runs = await executor.client.read_flow_runs(flow_run_filter=flt, deployment_filter=dflt, limit=100)
            for run in runs:
                await _apply(executor, store, run)
        except Exception as exc:
            log.warning("watching Prefect failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def _apply(executor: PrefectExecutor, store: JobStore, run: Any) -> None:
    job_id = (run.parameters or {}).get("job_id")
    if not job_id or run.state is None:
        return
    if run.state.name == "Cancelling":
        outcome = await store.cancel(job_id)
        if outcome != "requested":  # no worker holds it: nobody else will finish the run's state
            await executor._force(run.id, Cancelled(message=f"job {job_id} is {outcome}"))
        return
    outcome, detail = await store.retry(job_id, flow_run_id=str(run.id))
    if outcome == "queued":
        log.info("retry from the Prefect UI", job_id=job_id, attempt=detail)
    elif detail != "queued":  # nothing to retry (running or succeeded): do not leave the run waiting forever
        await executor._force(run.id, Cancelled(message=f"job {job_id} is {detail}; nothing to retry"))
