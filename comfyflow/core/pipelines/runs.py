"""Pipeline runs in Redis: the run record, its steps (step name -> job id), and the transitions of a run.

A run is queued on the run plane (``keys.runs``) when it is created; a runner in a worker process claims it with
a lease, executes the pipeline, and heart-beats the lease. A runner that dies loses the lease and another one
resumes the run: steps that have a job already are not submitted again (their job ids are deterministic).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from comfyflow.core.store import JobStore
from comfyflow.models import ErrorInfo, Priority


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    #: A step failed; the run waits for that step's job to be retried (Prefect UI, API) before it gives up.
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELED)


class PipelineRun(BaseModel):
    """A pipeline run as stored and served (its steps are listed separately)."""

    run_id: str
    pipeline: str
    status: RunState
    owner: str
    role: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    labels: list[str] = Field(default_factory=list)
    message: str | None = Field(default=None, description="What the run waits for, or why it ended.")
    result: Any = None
    error: ErrorInfo | None = None
    retry_window_seconds: float = 600.0
    flow_run_id: str | None = None
    attempts: int = Field(default=0, description="How many times a runner took the run (resumes included).")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


def new_run_id() -> str:
    return uuid.uuid4().hex


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def run_from_hash(raw: dict[str, str]) -> PipelineRun:
    def js(name: str) -> Any:
        value = raw.get(name)
        return json.loads(value) if value else None

    return PipelineRun(
        run_id=raw["id"],
        pipeline=raw.get("pipeline", ""),
        status=RunState(raw.get("status", "queued")),
        owner=raw.get("owner", ""),
        role=raw.get("role") or None,
        params=js("params") or {},
        priority=Priority(raw.get("priority") or "normal"),
        labels=js("labels") or [],
        message=raw.get("message") or None,
        result=js("result"),
        error=ErrorInfo(**e) if (e := js("error")) else None,
        retry_window_seconds=float(raw.get("retry_window") or 600),
        flow_run_id=raw.get("flow_run_id") or None,
        attempts=int(raw.get("claims") or 0),
        created_at=_ts(raw.get("created_at")) or datetime.now(UTC),
        started_at=_ts(raw.get("started_at")),
        finished_at=_ts(raw.get("finished_at")),
    )


class PipelineRunStore:
    """Pipeline runs over the job store's Redis client."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys

    async def create(
        self,
        pipeline: str,
        params: dict[str, Any],
        *,
        owner: str,
        role: str | None = None,
        priority: Priority = Priority.NORMAL,
        labels: list[str] | None = None,
        retry_window: float = 600.0,
        run_id: str | None = None,
        runner: str | None = None,
        job_extra: dict[str, Any] | None = None,
        daily_quota: tuple[str, int] | None = None,
    ) -> PipelineRun:
        """Record a queued run and put it on the run plane (``runner`` set = held by that process already)."""
        run_id = run_id or new_run_id()
        now = self.store.clock()
        record: dict[Any, Any] = {
            "id": run_id,
            "pipeline": pipeline,
            "owner": owner,
            "role": role or "",
            "params": json.dumps(params, default=str),
            "priority": Priority(priority).value,
            "labels": json.dumps(labels or []),
            "status": RunState.QUEUED.value,
            "retry_window": repr(float(retry_window)),
            "created_at": repr(now),
            "cancel": "0",
            "runner": runner or "",
            "job_extra": json.dumps(job_extra or {}, default=str),
            **({"quota_key": daily_quota[0], "quota_limit": daily_quota[1]} if daily_quota else {}),
        }
        member = f"prun:{run_id}"
        lease = int(now * 1000 + self.store.settings.lease_seconds * 1000) if runner else 0
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.pipeline_run(run_id), mapping=record)
        pipe.zadd(self.keys.owner_pipeline_runs(owner), {run_id: now})
        pipe.zadd(self.keys.runs, {member: lease})
        if runner:
            pipe.hincrby(self.keys.pipeline_run(run_id), "claims", 1)
        await pipe.execute()
        run = await self.get(run_id)
        assert run is not None
        return run

    async def get(self, run_id: str) -> PipelineRun | None:
        raw = await self.redis.hgetall(self.keys.pipeline_run(run_id))
        return run_from_hash({_s(k): _s(v) for k, v in raw.items()}) if raw else None

    async def raw(self, run_id: str) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in (await self.redis.hgetall(self.keys.pipeline_run(run_id))).items()}

    async def steps(self, run_id: str) -> dict[str, str]:
        """Step name -> job id, for every step submitted so far."""
        return {_s(k): _s(v) for k, v in (await self.redis.hgetall(self.keys.pipeline_steps(run_id))).items()}

    async def add_step(self, run_id: str, name: str, job_id: str) -> None:
        await self.redis.hset(self.keys.pipeline_steps(run_id), name, job_id)

    async def update(self, run_id: str, **fields: Any) -> None:
        """Set fields of the run (JSON for dicts and lists, '' for None)."""
        mapping: dict[Any, Any] = {
            k: json.dumps(v, default=str) if isinstance(v, dict | list) else ("" if v is None else str(v))
            for k, v in fields.items()
        }
        await self.redis.hset(self.keys.pipeline_run(run_id), mapping=mapping)

    async def set_status(self, run_id: str, status: RunState, **fields: Any) -> None:
        """Move the run to ``status`` (never out of a terminal state, except by ``retry``)."""
        raw = await self.raw(run_id)
        if not raw or RunState(raw.get("status", "queued")).terminal:
            return
        extra: dict[str, Any] = {"status": status.value, **fields}
        if status.terminal:
            extra["finished_at"] = repr(self.store.clock())
        await self.update(run_id, **extra)
        if status.terminal:
            ttl = self.store.ttl
            pipe = self.redis.pipeline(transaction=False)
            pipe.expire(self.keys.pipeline_run(run_id), ttl)
            pipe.expire(self.keys.pipeline_steps(run_id), ttl)
            await pipe.execute()

    async def cancel(self, run_id: str) -> dict[str, str]:
        """Cancel the run and its unfinished step jobs. Returns step name -> the job's cancel outcome."""
        raw = await self.raw(run_id)
        if not raw or RunState(raw.get("status", "queued")).terminal:
            return {}
        await self.redis.hset(self.keys.pipeline_run(run_id), "cancel", "1")
        outcomes = {name: await self.store.cancel(job_id) for name, job_id in (await self.steps(run_id)).items()}
        if not raw.get("runner"):  # nobody runs it: finish it here
            await self.set_status(run_id, RunState.CANCELED, message="canceled before it started")
            await self.redis.zrem(self.keys.runs, f"prun:{run_id}")
        return outcomes

    async def retry(self, run_id: str, *, flow_run_id: str | None = None) -> bool:
        """Run a failed or canceled run again: its succeeded steps are reused, failed steps' jobs are retried.
        False when the run is not failed or canceled."""
        raw = await self.raw(run_id)
        if not raw or raw.get("status") not in (RunState.FAILED.value, RunState.CANCELED.value):
            return False
        await self.update(
            run_id, status=RunState.QUEUED.value, cancel="0", resume="1", error="", result="", finished_at="",
            message="retried", retry_flow_run_id=flow_run_id or "",
        )  # fmt: skip
        pipe = self.redis.pipeline(transaction=True)
        pipe.persist(self.keys.pipeline_run(run_id))
        pipe.persist(self.keys.pipeline_steps(run_id))
        pipe.zadd(self.keys.runs, {f"prun:{run_id}": 0})
        await pipe.execute()
        return True

    async def owner_runs(self, owner: str, *, limit: int = 20) -> list[str]:
        res = await self.redis.zrevrange(self.keys.owner_pipeline_runs(owner), 0, limit - 1)
        return [_s(v) for v in res]
