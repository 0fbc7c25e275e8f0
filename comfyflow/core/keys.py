"""Every Redis key comfyflow uses, in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from comfyflow.models import Priority

GROUP = "workers"
PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


@dataclass(frozen=True)
class Keys:
    """Key layout under one prefix (``COMFYFLOW_KEY_PREFIX``, default ``cf``)."""

    prefix: str = "cf"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:ev:{job_id}"

    def queue(self, priority: Priority | str) -> str:
        return f"{self.prefix}:q:{Priority(priority).value}"

    @property
    def notify(self) -> str:
        """A plain stream every worker XREADs to wake up when work arrives."""
        return f"{self.prefix}:notify"

    @property
    def delayed(self) -> str:
        """Sorted set of job ids waiting out a retry backoff, scored by due time (ms)."""
        return f"{self.prefix}:delayed"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:jobs"

    # The three owner keys below are also built in Lua (lib.lua owner_key): keep the two in step.
    def owner_limits(self, owner: str) -> str:
        """Hash of the owner's limits the worker enforces (``max_running``), written by the API's policy."""
        return f"{self.prefix}:owner:{owner}:limits"

    def owner_running(self, owner: str) -> str:
        """Set of the owner's job ids running now."""
        return f"{self.prefix}:owner:{owner}:running"

    def owner_waiting(self, owner: str) -> str:
        """List of the owner's queued job ids parked at its running limit, in arrival order."""
        return f"{self.prefix}:owner:{owner}:waiting"

    def ratelimit(self, owner: str) -> str:
        """Sorted set of the owner's recent request times (sliding-window rate limit)."""
        return f"{self.prefix}:rl:{owner}"

    def slots(self, backend_url: str) -> str:
        digest = hashlib.sha1(backend_url.encode()).hexdigest()[:16]
        return f"{self.prefix}:slots:{digest}"

    @property
    def retention(self) -> str:
        """Sorted set of job ids whose artifacts are due for deletion, scored by due time (s)."""
        return f"{self.prefix}:retention"

    @property
    def prefect_gc(self) -> str:
        """List of ids of expired jobs whose Prefect flow runs are still to be deleted (drained by the executor)."""
        return f"{self.prefix}:prefect:gc"

    @property
    def workers(self) -> str:
        """Hash of worker id -> last heartbeat (ms)."""
        return f"{self.prefix}:workers"

    @property
    def control(self) -> str:
        """Pub/sub channel for cancel requests."""
        return f"{self.prefix}:control"

    @property
    def leader(self) -> str:
        return f"{self.prefix}:leader"

    # --- batches and pipeline runs (comfyflow/core/batches.py, comfyflow/core/pipelines/) ----------------------
    def batch(self, batch_id: str) -> str:
        """Hash of a batch: owner, total, priority, flags."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_items(self, batch_id: str) -> str:
        """List of the batch's job ids, in submission order."""
        return f"{self.prefix}:batch:{batch_id}:items"

    def batch_counts(self, batch_id: str) -> str:
        """Hash of job state -> number of the batch's items in it (kept by lib.lua ``count``: keep in step)."""
        return f"{self.prefix}:batch:{batch_id}:counts"

    def batch_staging(self, batch_id: str) -> str:
        """Hash of job id -> job fields (JSON) of a batch's items not released yet (core/batches.py)."""
        return f"{self.prefix}:batch:{batch_id}:staging"

    def batch_order(self, batch_id: str) -> str:
        """List of the job ids of a batch's items not released yet, in submission order."""
        return f"{self.prefix}:batch:{batch_id}:order"

    @property
    def batch_backlog(self) -> str:
        """Number of batch items queued now, over all batches (kept by lib.lua ``count``: keep in step)."""
        return f"{self.prefix}:batches:queued"

    def owner_batches(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:batches"

    @property
    def runs(self) -> str:
        """Sorted set of batch and pipeline runs to watch or execute (``batch:<id>``, ``prun:<id>``), scored by
        the lease expiry (ms) of the process running them; 0 = not claimed yet."""
        return f"{self.prefix}:runs"

    def pipeline_run(self, run_id: str) -> str:
        return f"{self.prefix}:prun:{run_id}"

    def pipeline_steps(self, run_id: str) -> str:
        """Hash of step name -> job id of one pipeline run."""
        return f"{self.prefix}:prun:{run_id}:steps"

    def owner_pipeline_runs(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:pruns"
