"""One attempt of one job, as a worker runs it: its claim, its leases, its progress reporting."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from comfyflow.core.runtime import Runtime
from comfyflow.core.slots import SlotLease
from comfyflow.core.store import Claim
from comfyflow.errors import LeaseLost
from comfyflow.models import Job, JobResult, Progress
from comfyflow.plugins.protocols import RenderEvent

PROMPT_NAMESPACE = uuid.UUID("6f1c1e0e-8d4e-4b8e-9a51-2f7f4c0de7a1")


def prompt_id_for(job_id: str, attempt: int) -> str:
    """Deterministic per job and attempt, so a later attempt can find this one in the backend's history."""
    return str(uuid.uuid5(PROMPT_NAMESPACE, f"{job_id}:{attempt}"))


@dataclass
class AttemptContext:
    runtime: Runtime
    claim: Claim
    job: Job
    raw: dict[str, str]
    leases: list[SlotLease] = field(default_factory=list)
    #: Why the attempt is being stopped from outside: "canceled", "lost" or "shutdown".
    stop_reason: str | None = None
    #: Set to make the heartbeat look at the job now (a cancel request arrived).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The attempt's result, once stored (the Prefect flow returns only a small summary).
    result: JobResult | None = None
    _last_progress: float = 0.0
    _last_node: str | None = None
    first_progress_at: float | None = None
    #: Noted from this attempt's own writes (``update``), for the metrics and the log context: the backend it
    #: runs on, and when (monotonic) its render started and finished.
    backend: str | None = None
    render_started: float | None = None
    render_finished: float | None = None
    #: When (monotonic) ComfyUI said it started executing this attempt's prompt.
    execution_started: float | None = None
    #: A prompt of this attempt may sit in a backend's queue (posted, or attached to), until its outputs are in.
    prompt_on_backend: bool = False

    @property
    def slot_stays_taken(self) -> bool:
        """The attempt stops (lost, or its worker shuts down) while its prompt stays in ComfyUI for the next
        attempt to adopt: its slot lease must stay taken until that attempt takes it over or the lease expires,
        else another job could take the slot and the backend would hold more prompts than its slots."""
        return self.prompt_on_backend and self.stop_reason in ("lost", "shutdown")

    @property
    def log(self) -> Any:
        context = {"request_id": self.raw.get("request_id"), "backend": self.backend}
        return structlog.get_logger("comfyflow.worker").bind(
            job_id=self.job.job_id, attempt=self.claim.attempt, **{k: v for k, v in context.items() if v}
        )

    async def update(self, *, event: tuple[str, dict[str, Any]] | None = None, **fields: Any) -> None:
        """Write fields of this attempt; raise LeaseLost if it is not ours any more."""
        if not await self.runtime.store.update(self.claim, event=event, **fields):
            raise LeaseLost(f"attempt {self.claim.attempt} of job {self.job.job_id} is no longer held by this worker")
        if fields.get("backend"):
            self.backend = str(fields["backend"])
            structlog.contextvars.bind_contextvars(backend=self.backend)
        if fields.get("render_started_at"):
            self.render_started, self.render_finished = time.monotonic(), None
        if fields.get("render_finished_at"):
            self.render_finished = time.monotonic()

    async def progress(self, progress: Progress, *, force: bool = False) -> None:
        """Report progress; throttled to ~10 writes a second unless the node changes or ``force``."""
        now = time.monotonic()
        if not force and progress.node == self._last_node and now - self._last_progress < 0.1:
            return
        self._last_progress, self._last_node = now, progress.node
        data = progress.model_dump()
        await self.update(event=("progress", data), progress=data)

    async def on_render_event(self, ev: RenderEvent) -> None:
        """Map backend events to job progress: the sampler's steps dominate the 0..1 value."""
        if self.first_progress_at is None:
            self.first_progress_at = time.monotonic()
        if ev.type == "started" and self.execution_started is None:
            self.execution_started = time.monotonic()
        current = self.job.progress
        if ev.type == "progress" and ev.max:
            value = 0.05 + 0.9 * min(1.0, (ev.value or 0) / ev.max)
            p = Progress(value=max(current.value, value), node=ev.node, step=ev.value, max=ev.max, phase="rendering")
        elif ev.type in ("node", "started", "cached", "executed"):
            p = Progress(value=max(current.value, 0.05), node=ev.node or current.node, phase="rendering")
        else:
            return
        self.job.progress = p
        await self.progress(p, force=ev.type == "started" or (ev.type == "progress" and ev.value == ev.max))
