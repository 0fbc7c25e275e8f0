"""Prefect's record of one attempt, written beside the attempt instead of in its way.

The attempt runs comfyflow's plain steps (``comfyflow/core/steps.py``); this module gives Prefect the same
records its engine would for the ``generate`` flow (``flows/generate.py``): the flow run, created from the
deployment when the job is claimed; one task run per step (validate, acquire_slot, render, store) with the
flow's real task keys, inputs linking them, and Running and final states stamped at the moment they happened;
the run's log lines; and its final state (Completed, Failed with the typed error, Cancelled or Crashed).

Task runs reach Prefect the way its own engine sends them, as state-change events over one websocket
(``emit_task_run_state_change_event``), recorded by the server's task-run recorder. Flow-run states go through
the orchestration API. Everything is sent by one background publisher per attempt, so a slow or absent Prefect
server costs the GPU nothing: the render never awaits a Prefect round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID, uuid4

import structlog
from prefect.client.schemas.objects import FlowRun, TaskRun, TaskRunPolicy, TaskRunResult
from prefect.events import emit_event
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED
from prefect.states import Cancelled, Completed, Crashed, Failed, Pending, Running, State

from comfyflow.core.attempt import AttemptContext
from comfyflow.core.worker import classify
from comfyflow.errors import LeaseLost
from comfyflow.models import Job, JobState
from flows.generate import acquire_slot, render, store, validate

if TYPE_CHECKING:
    from flows.executor import PrefectExecutor

T = TypeVar("T")
log = structlog.get_logger("comfyflow.executor")
#: Lines below this level are not sent to Prefect's run log.
RUN_LOG_LEVEL = logging.INFO

TASKS = {t.name: t for t in (validate, acquire_slot, render, store)}
#: The flow's data flow, as its engine records it in ``task_inputs``: (parameter, the step whose result it is).
INPUTS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "validate": (("ctx", None),),
    "acquire_slot": (("ctx", None), ("prepared", "validate")),
    "render": (("ctx", None), ("prepared", "validate"), ("lease", "acquire_slot")),
    "store": (("ctx", None), ("prepared", "validate"), ("rendered", "render")),
}


class AttemptRecord:
    """The Prefect records of one attempt. Create it when the attempt starts; ``finish`` it exactly once."""

    def __init__(self, executor: PrefectExecutor, ctx: AttemptContext) -> None:
        self.executor = executor
        self.ctx = ctx
        self.flow_run: FlowRun | None = None
        self.task_runs: dict[str, TaskRun] = {}
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._opened = asyncio.ensure_future(executor.open_run(ctx))
        self._publisher = executor.background(self._publish())
        self.send_log(logging.INFO, f"job {ctx.job.job_id} attempt {ctx.claim.attempt} "
                                    f"(request {ctx.raw.get('request_id') or '-'})")  # fmt: skip

    async def step(self, name: str, work: Awaitable[T]) -> T:
        """Run one step as the flow's task ``name`` would: Running now, then its final state."""
        task_run = self._task_run(name)
        self._transition(task_run, Running())
        try:
            value = await work
        except BaseException as exc:
            self._transition(task_run, final_state(self.ctx, exc))
            raise
        self._transition(task_run, Completed())
        return value

    def tag(self, tag: str) -> None:
        """Add a tag to the flow run (the backend it renders on), in the background."""
        self._outbox.put_nowait(("tag", tag))

    def send_log(self, level: int, message: str) -> None:
        self._outbox.put_nowait(("log", (level, message, now())))

    def finish(self, state: State[Any]) -> None:
        """Set the flow run's final state (after every task-run record before it); ends the publisher."""
        self.send_log(logging.ERROR if state.is_failed() or state.is_crashed() else logging.INFO,
                      f"job {self.ctx.job.job_id} attempt {self.ctx.claim.attempt}: {state.name}"
                      + (f": {state.message}" if state.message else ""))  # fmt: skip
        self._outbox.put_nowait(("final", state))

    # --- building the records ---------------------------------------------------------------------------------
    def _task_run(self, name: str) -> TaskRun:
        task = TASKS[name]
        pending = Pending()
        inputs: dict[str, list[Any]] = {}
        for param, source in INPUTS[name]:
            upstream = self.task_runs.get(source) if source else None
            inputs[param] = [TaskRunResult(id=upstream.id)] if upstream else []
        task_run = TaskRun(
            id=uuid4(), name=f"{name}-{self.ctx.claim.attempt}", task_key=task.task_key,
            dynamic_key=str(self.ctx.claim.attempt), task_version=task.version,
            empirical_policy=TaskRunPolicy(retries=0, retry_delay=0), tags=self.executor.tags_for(self.ctx),
            task_inputs=inputs, expected_start_time=pending.timestamp, state=pending, state_id=pending.id,
            state_type=pending.type, state_name=pending.name, created=pending.timestamp, updated=pending.timestamp,
        )  # fmt: skip
        self.task_runs[name] = task_run
        return task_run

    def _transition(self, task_run: TaskRun, state: State[Any]) -> None:
        """What Prefect's task engine does in ``set_state``, then queue the event it would emit."""
        last = task_run.state
        assert last is not None
        if state.timestamp <= last.timestamp:
            state.timestamp = last.timestamp + dt.timedelta(microseconds=1)
        state.state_details.task_run_id = task_run.id
        if last.is_running():
            task_run.total_run_time += state.timestamp - last.timestamp
        if state.is_running():
            task_run.run_count += 1
            task_run.start_time = state.timestamp
        if state.is_final() and task_run.start_time and not task_run.end_time:
            task_run.end_time = state.timestamp
        task_run.state, task_run.state_id, task_run.state_type, task_run.state_name = (
            state, state.id, state.type, state.name,
        )  # fmt: skip
        snapshot = task_run.model_dump(mode="json", exclude_none=True, exclude=_SERVER_FIELDS)  # as it is now
        self._outbox.put_nowait(("task", (task_run.id, snapshot, last, state)))

    # --- sending them -----------------------------------------------------------------------------------------
    async def _publish(self) -> None:
        try:
            self.flow_run = await self._opened
        except Exception as exc:  # Prefect down or refusing: the attempt runs on without its records
            log.warning("no Prefect flow run for this attempt", job_id=self.ctx.job.job_id, error=str(exc))
            return
        last_event: Any = None
        while True:
            kind, item = await self._outbox.get()
            try:
                if kind == "task":
                    last_event = self._emit(*item, follows=last_event)
                elif kind == "tag":
                    self.flow_run.tags = [*self.flow_run.tags, item]
                    await self.executor.update_tags(self.flow_run.id, self.flow_run.tags)
                elif kind == "log":
                    self._log(*item)
                elif kind == "final":
                    await self.executor.force_state(self.flow_run.id, item)
                    if item.is_completed():
                        await self.executor.publish_artifacts(self.flow_run.id, self.ctx)
                    return
            except Exception as exc:  # visibility only: never fail or stall a job over its record
                log.warning("could not record to Prefect", job_id=self.ctx.job.job_id, record=kind, error=str(exc))

    def _emit(self, task_id: UUID, task_run: dict[str, Any], initial: State[Any], state: State[Any],
              follows: Any) -> Any:  # fmt: skip
        """The event Prefect's task engine emits for this transition (``emit_task_run_state_change_event``), with
        the related resources its events worker would add from the flow run's context (the server's task-run
        recorder finds the flow run there). ``task_run`` is the task run as dumped at the transition."""
        run = self.flow_run
        assert run is not None
        task_run["flow_run_run_count"] = run.run_count
        state.state_details.flow_run_id = state.state_details.task_run_id = None
        details = {"exclude_none": True, "exclude_unset": True}
        payload = {
            "intended": {"from": initial.type.value, "to": state.type.value},
            "initial_state": {"type": initial.type.value, "name": initial.name, "message": initial.message,
                              "state_details": initial.state_details.model_dump(mode="json", **details)},
            "validated_state": {"type": state.type.value, "name": state.name, "message": state.message,
                                "state_details": state.state_details.model_dump(mode="json", **details),
                                "data": None},
            "task_run": task_run,
        }  # fmt: skip
        related = [
            _related("flow-run", run.id, run.name),
            _related("flow", run.flow_id, "generate"),
            *([_related("deployment", run.deployment_id, "generate")] if run.deployment_id else []),
            *[{"prefect.resource.id": f"prefect.tag.{t}", "prefect.resource.role": "tag"} for t in task_run["tags"]],
        ]
        resource = {
            "prefect.resource.id": f"prefect.task-run.{task_id}", "prefect.resource.name": task_run["name"],
            "prefect.run-count": str(task_run["run_count"]), "prefect.state-message": state.message or "",
            "prefect.state-name": state.name or "", "prefect.state-timestamp": state.timestamp.isoformat(),
            "prefect.state-type": state.type.value, "prefect.orchestration": "client",
        }  # fmt: skip
        return emit_event(event=f"prefect.task-run.{state.name}", resource=resource, occurred=state.timestamp,
                          payload=payload, related=related, id=state.id, follows=follows)  # fmt: skip

    def _log(self, level: int, message: str, at: dt.datetime) -> None:
        """A line of the run's log in Prefect (what the flow's run logger would ship), batched by Prefect's log
        worker; not printed here: the worker's own log has the same facts."""
        run = self.flow_run
        if run is None or level < RUN_LOG_LEVEL or not PREFECT_LOGGING_TO_API_ENABLED.value():
            return
        entry = {"name": "prefect.flow_runs", "level": level, "message": message, "timestamp": at.isoformat(),
                 "flow_run_id": str(run.id), "task_run_id": None}  # fmt: skip
        APILogWorker.instance().send(entry)


#: Fields of a task run that Prefect's engine leaves out of its events (the server fills them).
_SERVER_FIELDS = {"id", "created", "updated", "flow_run_id", "state_id", "state_type", "state_name", "state",
                  "estimated_start_time_delta", "estimated_run_time"}  # fmt: skip


def _related(kind: str, object_id: Any, name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"prefect.{kind}.{object_id}", "prefect.resource.role": kind,
            "prefect.resource.name": name}  # fmt: skip


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def state_for_job(job: Job) -> State[Any]:
    """The state a flow run should end in for a job that has moved on without it (its worker died)."""
    if job.status == JobState.SUCCEEDED:
        return Completed(message="job succeeded (its worker stopped before recording it)")
    if job.status == JobState.CANCELED:
        return Cancelled(message="canceled by request")
    if job.status == JobState.FAILED and job.error is not None and job.error.code != "WORKER_LOST":
        return Failed(message=f"{job.error.code}: {job.error.message}")
    return Crashed(message=f"worker lost during this attempt; the job is {job.status.value} (attempt {job.attempt})")


def final_state(ctx: AttemptContext, exc: BaseException) -> State[Any]:
    """The Prefect state an attempt (or one of its steps) ends in when ``exc`` stopped it."""
    if isinstance(exc, asyncio.CancelledError):
        if ctx.stop_reason == "canceled":
            return Cancelled(message="canceled by request")
        return Crashed(message=f"attempt released ({ctx.stop_reason or 'worker stopped'}); the job is requeued")
    if isinstance(exc, LeaseLost):
        return Crashed(message=f"worker lost the attempt: {exc}")
    info = classify(exc)
    return Failed(message=f"{info.code}: {info.message}")


__all__ = ["AttemptRecord", "final_state", "state_for_job"]
