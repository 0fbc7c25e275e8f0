"""comfyflow's executor: each attempt a flow run created from the ``generate`` deployment, recorded as it runs.

The attempt runs comfyflow's plain steps in the worker's own event loop, and :class:`flows.records.AttemptRecord`
gives Prefect the records its engine would write for the ``generate`` flow (flow run, four task runs with their
real states and timings, logs, final state) from a background publisher, over one client opened for the whole
process. Nothing between a free GPU slot and ``POST /prompt`` waits for Prefect, and a Prefect server that is
down or slow costs the jobs nothing but their records. Measured (benchmarks/bench_prefect.py), Prefect's own
engine spent ~200 ms of the worker's CPU per run (a new HTTP client with a new TLS context per run, task-engine
bookkeeping) and put its round trips on the render's path; see benchmarks/PREFECT_PROFILE.md.

A Retry or Cancel pressed in the Prefect UI is picked up by :func:`watch_ui` and becomes a comfyflow retry or
cancel; runs whose worker died are marked Crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit
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
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.states import Cancelled, Completed, Crashed, Running, State

from comfyflow.core.attempt import AttemptContext
from comfyflow.core.steps import acquire_step, render_step, store_step, validate_step
from comfyflow.core.store import JobStore
from comfyflow.models import JobResult, JobState
from flows.artifacts import publish_attempt
from flows.generate import generate
from flows.records import AttemptRecord, final_state, state_for_job

log = structlog.get_logger("comfyflow.executor")

DEPLOYMENT_NAME = "generate"
#: How long closing the executor waits for the records still being sent.
FLUSH_SECONDS = 10.0
#: Prefect API calls one process makes at once.
MAX_CALLS = 8


class PrefectExecutor:
    """A worker ``Runner`` that runs each attempt with its Prefect records. Open with ``async with``."""

    def __init__(self) -> None:
        self.client: PrefectClient | None = None
        self.deployment_id: UUID | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: Prefect API calls in flight from this process: a burst of attempts queues here, not on the server.
        self.calls = asyncio.Semaphore(MAX_CALLS)

    async def __aenter__(self) -> PrefectExecutor:
        self.client = get_client()
        await self.client.__aenter__()
        # comfyflow makes every run of it with parameters it built: checking them against the deployment's schema
        # (jsonschema, the metaschema first) was a quarter of the server's cost of making a run
        deployment = await generate.to_deployment(name=DEPLOYMENT_NAME, description=generate.__doc__,
                                                  enforce_parameter_schema=False)  # fmt: skip
        self.deployment_id = await deployment.apply()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._background:  # the last attempts' records: flushed, within a bound
            await asyncio.wait(set(self._background), timeout=FLUSH_SECONDS)
        for worker in (EventsWorker, APILogWorker):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.drain_all(at_exit=False), FLUSH_SECONDS)  # type: ignore[arg-type]
        if self.client is not None:
            await self.client.__aexit__(*exc)

    async def __call__(self, ctx: AttemptContext) -> JobResult:
        assert self.client is not None and self.deployment_id is not None
        record = AttemptRecord(self, ctx)
        try:
            prepared = await record.step("validate", validate_step(ctx))
            lease = await record.step("acquire_slot", acquire_step(ctx, prepared))
            backend = lease.backend if lease else prepared.adopt_backend
            if backend:
                record.tag(f"backend:{urlsplit(backend).netloc or backend}")
            rendered = await record.step("render", render_step(ctx, prepared, lease))
            result = await record.step("store", store_step(ctx, prepared, rendered))
        except BaseException as exc:
            record.finish(final_state(ctx, exc))
            raise
        adopted = " (adopted)" if rendered.adopted else ""
        record.finish(Completed(message=f"{len(result.artifacts)} artifact(s) from {rendered.backend}{adopted}"))
        return result

    def background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def tags_for(self, ctx: AttemptContext) -> list[str]:
        job = ctx.job
        tags = [f"job:{job.job_id}", f"priority:{job.priority.value}", f"owner:{job.owner}",
                *[f"label:{lab}" for lab in job.labels[:5]]]  # fmt: skip
        if ctx.raw.get("request_id"):  # the API request that submitted the job (X-Request-ID), findable in the UI
            tags.append(f"request:{ctx.raw['request_id']}")
        return tags

    async def open_run(self, ctx: AttemptContext) -> Any:
        """The attempt's flow run, Running: created from the deployment, or the one the UI's Retry re-runs. The
        job names it once it exists (``flow_run_id``), even if the attempt has ended meanwhile."""
        assert self.client is not None and self.deployment_id is not None
        job, attempt = ctx.job, ctx.claim.attempt
        previous = ctx.raw.get("flow_run_id")
        reuse = ctx.raw.get("retry_flow_run_id")
        if previous and previous != reuse:
            self.background(self._crash_if_running(previous, attempt - 1))
        async with self.calls:
            if reuse:  # the UI's Retry: run the same flow run again (it waits in AwaitingRetry)
                run = await self.client.read_flow_run(UUID(reuse))
                await self.client.set_flow_run_state(run.id, Running(), force=True)
                run.run_count += 1
            else:
                run = await self.client.create_flow_run_from_deployment(
                    self.deployment_id,
                    parameters={"job_id": job.job_id, "attempt": attempt},
                    name=f"{job.job_id[:12]}-attempt-{attempt}",
                    tags=self.tags_for(ctx),
                    idempotency_key=f"{job.job_id}:{attempt}",
                    state=Running(),
                )
        await ctx.runtime.store.annotate(job.job_id, attempt, flow_run_id=str(run.id))
        return run

    async def _crash_if_running(self, flow_run_id: str, attempt: int) -> None:
        """A previous attempt's run whose worker died stays "Running" in Prefect: mark it crashed."""
        assert self.client is not None
        with contextlib.suppress(Exception):
            run = await self.client.read_flow_run(UUID(flow_run_id))
            if run.state is not None and not run.state.is_final():
                await self.force_state(run.id, Crashed(message=f"worker lost during attempt {attempt}; job reclaimed"))

    async def force_state(self, flow_run_id: UUID, state: State[Any], *, quiet: bool = False) -> None:
        """Set the run's state whatever it was; ``quiet``: a failure is only logged (the UI's view, not the job's)."""
        assert self.client is not None
        try:
            async with self.calls:
                await asyncio.shield(self.client.set_flow_run_state(flow_run_id, state, force=True))
        except Exception as exc:
            if not quiet:
                raise
            log.warning("could not set a flow run's state", flow_run_id=str(flow_run_id), error=str(exc))

    async def publish_artifacts(self, flow_run_id: UUID, ctx: AttemptContext) -> None:
        """The job's link and table as artifacts of its run (issue 17), after its final state."""
        assert self.client is not None
        await publish_attempt(self.client, flow_run_id, ctx, gate=self.calls)

    async def update_tags(self, flow_run_id: UUID, tags: list[str]) -> None:
        assert self.client is not None
        async with self.calls:
            await self.client.update_flow_run(flow_run_id, tags=tags)


async def watch_ui(executor: PrefectExecutor, store: JobStore, stop: asyncio.Event, interval: float = 1.0) -> None:
    """Turn Retry and Cancel pressed in the Prefect UI on ``generate`` runs into comfyflow retries and cancels,
    and end the runs of attempts whose worker died (every ``RECONCILE_EVERY`` intervals)."""
    assert executor.client is not None and executor.deployment_id is not None
    flt = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["AwaitingRetry", "Cancelling"])))
    dflt = DeploymentFilter(id=DeploymentFilterId(any_=[executor.deployment_id]))
    reconciler = Reconciler(executor, store)
    tick = 0
    while not stop.is_set():
        try:
            runs = await executor.client.read_flow_runs(flow_run_filter=flt, deployment_filter=dflt, limit=100)
            for run in runs:
                await _apply(executor, store, run)
            if tick % RECONCILE_EVERY == 0:
                await reconciler.sweep(dflt)
            await delete_expired_runs(executor, store)
        except Exception as exc:
            log.warning("watching Prefect failed", error=str(exc))
        tick += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


#: Intervals of ``watch_ui`` between two looks at the Running runs.
RECONCILE_EVERY = 10


class Reconciler:
    """Ends Running ``generate`` runs whose attempt is over: a worker killed without warning leaves its run
    Running, and when no next attempt follows (the job failed after its last attempt, or succeeded in the
    worker's last moment) nobody else would. A run is ended only when seen stale twice in a row, so an attempt
    that has just finished has time to send its own final state."""

    def __init__(self, executor: PrefectExecutor, store: JobStore) -> None:
        self.executor = executor
        self.store = store
        self.suspects: set[UUID] = set()

    async def sweep(self, deployments: DeploymentFilter) -> None:
        assert self.executor.client is not None
        running = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Running"])))
        runs = await self.executor.client.read_flow_runs(flow_run_filter=running, deployment_filter=deployments,
                                                         limit=200)  # fmt: skip
        stale: set[UUID] = set()
        for run in runs:
            job_id = (run.parameters or {}).get("job_id")
            job = await self.store.get(job_id) if job_id else None
            if job is None or job.flow_run_id != str(run.id) or job.status != JobState.RUNNING:
                stale.add(run.id)
                if run.id in self.suspects:
                    state = (
                        state_for_job(job)
                        if job is not None and job.flow_run_id == str(run.id)
                        else Crashed(message="worker lost during this attempt; the job moved on without it")
                    )
                    await self.executor.force_state(run.id, state, quiet=True)
        self.suspects = stale


async def delete_expired_runs(executor: PrefectExecutor, store: JobStore, batch: int = 50) -> int:
    """Delete the flow runs (every attempt's, tagged ``job:<id>``) of jobs the retention sweeper expired; their
    task runs, states and logs go with them. Returns how many runs were deleted."""
    assert executor.client is not None and executor.deployment_id is not None
    deleted = 0
    while True:
        raw = await store.redis.lrange(store.keys.prefect_gc, 0, batch - 1)
        if not raw:
            return deleted
        tags = [f"job:{j.decode() if isinstance(j, bytes) else j}" for j in raw]
        body = {"flow_runs": {"tags": {"any_": tags}, "deployment_id": {"any_": [str(executor.deployment_id)]}},
                "limit": BULK_LIMIT}  # fmt: skip
        while True:  # a job may have several attempts' runs: until none of these jobs has one left
            async with executor.calls:
                r = await executor.client.request("POST", "/flow_runs/bulk_delete", json=body)  # type: ignore[arg-type]
            r.raise_for_status()
            gone = len(r.json().get("deleted", []))
            deleted += gone
            if gone < BULK_LIMIT:
                break
        await store.redis.ltrim(store.keys.prefect_gc, len(raw), -1)


#: Prefect's most flow runs deleted by one bulk_delete.
BULK_LIMIT = 50


async def _apply(executor: PrefectExecutor, store: JobStore, run: Any) -> None:
    job_id = (run.parameters or {}).get("job_id")
    if not job_id or run.state is None:
        return
    if run.state.name == "Cancelling":
        outcome = await store.cancel(job_id)
        if outcome != "requested":  # no worker holds it: nobody else will finish the run's state
            await executor.force_state(run.id, Cancelled(message=f"job {job_id} is {outcome}"), quiet=True)
        return
    outcome, detail = await store.retry(job_id, flow_run_id=str(run.id))
    if outcome == "queued":
        log.info("retry from the Prefect UI", job_id=job_id, attempt=detail)
    elif detail != "queued":  # nothing to retry (running or succeeded): do not leave the run waiting forever
        await executor.force_state(run.id, Cancelled(message=f"job {job_id} is {detail}; nothing to retry"), quiet=True)
