"""Pipelines and batches as Prefect flow runs, executed in-process by the workers' run plane.

Every registered pipeline is a deployment of the ``pipeline`` flow, named after the pipeline; each run of it is a
flow run named ``<pipeline>-<run id>``, tagged with the pipeline, the run id, the caller's role and the priority,
whose task runs are its steps (``step:<name>``, tagged with the step's job id). The steps' jobs run as ordinary
``generate`` flow runs, tagged ``label:pipeline-run:<run id>``. Retry pressed in the UI on a failed step's
``generate`` run retries that job (``flows/executor.py: watch_ui``); the pipeline, which waits on its steps'
jobs in Redis, then goes on. Retry on the pipeline's own run resumes it (done steps are reused, failed ones
retried); Cancel cancels it. Batches get the same treatment with the ``batch`` flow (``flows/batch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import structlog
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
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

from comfyflow.core.batches import BatchStore
from comfyflow.core.pipelines import registry
from comfyflow.core.pipelines.dsl import StepOutput, step_job_id
from comfyflow.core.pipelines.execution import execute
from comfyflow.core.pipelines.plane import RunPlane
from comfyflow.core.pipelines.runs import PipelineRunStore, RunState
from comfyflow.core.runtime import Runtime
from comfyflow.errors import ComfyflowError
from flows.artifacts import publish_pipeline_run
from flows.batch import ACTIVE as BATCHES
from flows.batch import batch, batch_body

log = structlog.get_logger("comfyflow.plane")

#: What this process runs inside a pipeline's flow run, by run id (registered before the flow runs).
ACTIVE: dict[str, Callable[[], Awaitable[Any]]] = {}


class PipelineRunFailed(ComfyflowError):
    """Raised (to fail the pipeline's flow run) when the pipeline run failed."""

    code = "PIPELINE_FAILED"


@flow(name="pipeline", persist_result=False, retries=0, validate_parameters=False)
async def pipeline(run_id: str, params: dict[str, Any] | None = None) -> Any:
    """Run pipeline run ``run_id`` (its pipeline is the deployment's name) until it ends."""
    body = ACTIVE.get(run_id)
    if body is None:
        raise ComfyflowError(
            f"Pipeline run {run_id} is not held by this process. Pipeline flow runs are executed by comfyflow's "
            "workers; start runs with POST /api/v1/pipelines/<name>/runs or Pipeline.start()."
        )
    return await body()


def step_wrapper(run_id: str) -> Callable[[str, Callable[[], Awaitable[StepOutput]]], Awaitable[StepOutput]]:
    """Each step as a task run of the pipeline's flow run, tagged with its job id."""

    async def wrap(name: str, body: Callable[[], Awaitable[StepOutput]]) -> StepOutput:
        async def run_step() -> StepOutput:
            return await body()

        job_id = step_job_id(run_id, name)
        step_task = task(name=f"step:{name}", cache_policy=NO_CACHE, persist_result=False, retries=0,
                         tags=[f"job:{job_id}"])(run_step)  # fmt: skip
        return await step_task()

    return wrap


def _tags(**values: Any) -> list[str]:
    return [f"{k.replace('_', '-')}:{v}" for k, v in values.items() if v]


class PrefectPlane:
    """The run plane with a flow run per batch and per pipeline run. Open with ``async with``."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.batches = BatchStore(runtime.store)
        self.runs = PipelineRunStore(runtime.store)
        self.client: PrefectClient | None = None
        self.batch_deployment: UUID | None = None
        self.pipeline_deployments: dict[str, UUID] = {}

    async def __aenter__(self) -> PrefectPlane:
        self.client = get_client()
        await self.client.__aenter__()
        self.batch_deployment = await (await batch.to_deployment(name="batch", description=batch.__doc__)).apply()
        for name in registry.available():
            await self.deployment_for(name)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.client is not None:
            await self.client.__aexit__(*exc)

    async def deployment_for(self, name: str) -> UUID:
        """The deployment of pipeline ``name`` (made on first use, for pipelines registered later)."""
        if name not in self.pipeline_deployments:
            described = registry.get(name).description or pipeline.__doc__
            deployment = await pipeline.to_deployment(name=name, description=described, tags=[f"pipeline:{name}"])
            self.pipeline_deployments[name] = await deployment.apply()
        return self.pipeline_deployments[name]

    def plane(self, *, concurrency: int = 64) -> RunPlane:
        return RunPlane(self.rt, {"batch": self.run_batch, "prun": self.run_pipeline}, concurrency=concurrency)

    # --- handlers -------------------------------------------------------------------------------------------

    async def run_batch(self, batch_id: str) -> None:
        b = await self.batches.get(batch_id)
        if b is None:
            return
        raw = {
            k.decode(): v.decode() for k, v in (await self.rt.redis.hgetall(self.rt.store.keys.batch(batch_id))).items()
        }
        name = f"batch-{b.name}-{batch_id[:12]}" if b.name else f"batch-{batch_id[:12]}"
        tags = _tags(batch=batch_id, role=b.role, priority=b.priority.value if b.priority else "mixed", owner=b.owner)
        body = batch_body(self.rt, batch_id)
        await self._as_flow_run(
            kind="batch", run_id=batch_id, flow_=batch, deployment_id=self.batch_deployment, name=name, tags=tags,
            parameters={"batch_id": batch_id}, body=body, active=BATCHES, raw=raw,
            save=lambda fr: self.batches.set_fields(batch_id, flow_run_id=fr, retry_flow_run_id=""),
        )  # fmt: skip

    async def run_pipeline(self, run_id: str) -> None:
        run = await self.runs.get(run_id)
        if run is None or run.status.terminal:
            return
        raw = await self.runs.raw(run_id)

        async def body() -> Any:
            done = await execute(self.rt, run_id, wrap_step=step_wrapper(run_id))
            await publish_pipeline_run(self.rt, run_id)  # Prefect artifacts: a link and a table of the steps
            if done.status == RunState.FAILED:
                raise PipelineRunFailed(done.message or "the pipeline run failed", details=done.error)
            if done.status == RunState.CANCELED:
                return Cancelled(message="pipeline run canceled")
            return done.result

        try:
            deployment = await self.deployment_for(run.pipeline)
        except ComfyflowError:  # not registered here: execute() records why the run cannot run
            await execute(self.rt, run_id)
            return
        tags = _tags(pipeline=run.pipeline, pipeline_run=run_id, role=run.role, priority=run.priority.value,
                     owner=run.owner)  # fmt: skip
        await self._as_flow_run(
            kind="prun", run_id=run_id, flow_=pipeline, deployment_id=deployment, name=f"{run.pipeline}-{run_id[:12]}",
            tags=tags, parameters={"run_id": run_id, "params": run.params}, body=body, active=ACTIVE, raw=raw,
            save=lambda fr: self.runs.update(run_id, flow_run_id=fr, retry_flow_run_id=""),
        )  # fmt: skip

    async def _as_flow_run(
        self, *, kind: str, run_id: str, flow_: Any, deployment_id: UUID | None, name: str, tags: list[str],
        parameters: dict[str, Any], body: Callable[[], Awaitable[Any]], active: dict[str, Any], raw: dict[str, str],
        save: Callable[[str], Awaitable[None]],
    ) -> None:  # fmt: skip
        assert self.client is not None and deployment_id is not None
        previous, reuse = raw.get("flow_run_id"), raw.get("retry_flow_run_id")
        try:
            if previous and previous != reuse:
                await self._crash_if_running(previous)
            if reuse:  # Retry pressed in the UI: run that same flow run again
                flow_run = await self.client.read_flow_run(UUID(reuse))
            else:
                flow_run = await self.client.create_flow_run_from_deployment(
                    deployment_id, parameters=parameters, name=name, tags=tags,
                    idempotency_key=f"{kind}:{run_id}:{raw.get('claims', '0')}",
                )  # fmt: skip
        except Exception as exc:  # Prefect down: the run goes on, only its visibility suffers
            log.warning("Prefect unavailable, running without a flow run", run=f"{kind}:{run_id}", error=str(exc))
            with contextlib.suppress(ComfyflowError):
                await body()
            return
        await save(str(flow_run.id))
        active[run_id] = body
        try:
            await run_flow_async(flow_, flow_run=flow_run, parameters=parameters, return_type="state")
        except asyncio.CancelledError:
            await self._force(flow_run.id, Crashed(message="runner stopped; another worker resumes the run"))
            raise
        finally:
            active.pop(run_id, None)

    async def _crash_if_running(self, flow_run_id: str) -> None:
        """The run's previous flow run, left Running by a runner that died: mark it crashed."""
        assert self.client is not None
        with contextlib.suppress(Exception):
            run = await self.client.read_flow_run(UUID(flow_run_id))
            if run.state is not None and not run.state.is_final():
                await self._force(run.id, Crashed(message="runner lost; the run was resumed by another worker"))

    async def _force(self, flow_run_id: UUID, state: Any) -> None:
        assert self.client is not None
        with contextlib.suppress(Exception):
            await asyncio.shield(self.client.set_flow_run_state(flow_run_id, state, force=True))

    # --- Retry and Cancel pressed in the Prefect UI ---------------------------------------------------------

    async def watch_ui(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Turn Retry and Cancel on batch and pipeline flow runs into comfyflow retries and cancels."""
        assert self.client is not None
        flt = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["AwaitingRetry", "Cancelling"])))
        while not stop.is_set():
            ids = [self.batch_deployment, *self.pipeline_deployments.values()]
            dflt = DeploymentFilter(id=DeploymentFilterId(any_=[i for i in ids if i is not None]))
            try:
                for run in await self.client.read_flow_runs(flow_run_filter=flt, deployment_filter=dflt, limit=100):
                    await self._apply(run)
            except Exception as exc:
                log.warning("watching Prefect failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _apply(self, run: Any) -> None:
        params = run.parameters or {}
        cancelling = run.state is not None and run.state.name == "Cancelling"
        if run.deployment_id == self.batch_deployment and params.get("batch_id"):
            batch_id = params["batch_id"]
            if cancelling:
                await self.batches.cancel(batch_id)
                if not await self._held(f"batch:{batch_id}"):
                    await self._force(run.id, Cancelled(message="batch canceled"))
                return
            await self.batches.set_fields(batch_id, retry_flow_run_id=str(run.id))
            if not await self.batches.retry(batch_id, include_canceled=True):
                await self.batches.set_fields(batch_id, retry_flow_run_id="")
                await self._force(run.id, Cancelled(message="the batch has no failed items to retry"))
            return
        run_id = params.get("run_id")
        if not run_id:
            return
        if cancelling:
            await self.runs.cancel(run_id)
            if not await self._held(f"prun:{run_id}"):
                await self._force(run.id, Cancelled(message="pipeline run canceled"))
            return
        if not await self.runs.retry(run_id, flow_run_id=str(run.id)):
            await self._force(run.id, Cancelled(message="the pipeline run is not failed; nothing to retry"))

    async def _held(self, member: str) -> bool:
        score = await self.rt.redis.zscore(self.rt.store.keys.runs, member)
        return bool(score)


async def run_plane(runtime: Runtime, stop: asyncio.Event) -> None:
    """The Prefect run plane of one worker process, with its UI watcher, until ``stop`` is set."""
    async with PrefectPlane(runtime) as plane:
        watcher = asyncio.create_task(plane.watch_ui(stop))
        try:
            await plane.plane().run(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
