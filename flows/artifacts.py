"""Prefect artifacts of comfyflow's runs: what a job made, shown on its flow run in the Prefect UI.

A ``generate`` run gets a link to the job (its page in the web console when the API serves one, else its API
resource) with its first image under it, and a table (seed, backend, timings, outputs); a ``batch`` run gets a
progress artifact kept up to date while its items run, then the same link and table for the batch; a pipeline
run gets a link and a table of its steps. A job's are published after the render, from a background task, so they
cost the GPU nothing; none of them can fail a job, a batch or a pipeline run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

import structlog
from prefect import get_run_logger
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.context import FlowRunContext

from comfyflow.core.attempt import AttemptContext
from comfyflow.core.batches import Batch
from comfyflow.core.links import Links
from comfyflow.core.pipelines.runs import PipelineRunStore
from comfyflow.core.runtime import Runtime
from comfyflow.models import Job
from comfyflow.prefect import links

log = structlog.get_logger("comfyflow.artifacts")
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run ``coro`` in the background (kept referenced until done); a failure is logged, never raised."""
    task = asyncio.create_task(coro)
    _background.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("publishing Prefect artifacts failed", error=f"{type(t.exception()).__name__}: {t.exception()}")

    task.add_done_callback(done)
    return task


async def _create(client: PrefectClient, flow_run_id: UUID | str, kind: str, data: Any, description: str) -> UUID:
    made = await client.create_artifact(
        ArtifactCreate(type=kind, data=data, description=description, flow_run_id=UUID(str(flow_run_id)))
    )
    return made.id


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def job_table(job: Job) -> list[dict[str, Any]]:
    """Rows of (what, value): the job, seed, backend, timings, then one row per output."""
    result, d = job.result, job.durations
    rows: list[tuple[str, Any]] = [
        ("job", job.job_id), ("status", job.status.value), ("attempt", job.attempt),
        ("seed", result.seed if result else None), ("backend", (result.backend if result else None) or job.backend),
        ("queue wait", _seconds(d.queue_wait)), ("render", _seconds(d.render)), ("store", _seconds(d.store)),
        ("total", _seconds(d.total)),
    ]  # fmt: skip
    for art in result.artifacts if result else []:
        rows.append((f"output {art.index}", f"{art.key} ({art.content_type}, {art.size} bytes)"))
    return [{"what": what, "value": value} for what, value in rows]


async def publish_job(
    client: PrefectClient, flow_run_id: UUID | str, job: Job, *, base_url: str, console: bool | None = None,
    image_url: str | None = None,
) -> list[UUID]:  # fmt: skip
    """Attach to flow run ``flow_run_id`` a link to ``job`` (with, given its URL, its first image) and its table.

    Args:
        base_url: where clients reach the API (``Settings.public_base_url``).
        console: whether the API serves the web console; asked of the API when None.
    Returns:
        The ids of the artifacts made.
    """
    if console is None:
        console = await links.console_served(base_url)
    page = links.job_page(base_url, job.job_id, console=console)
    link = f"[job {job.job_id}]({page})"
    if image_url:  # the picture, in the same artifact as the link: one API call less per job
        link += f"\n\n![first output of job {job.job_id}]({image_url})"
    return [
        await _create(client, flow_run_id, "markdown", link,
                      "The job in comfyflow" + (" (web console)" if console else " (API resource)")
                      + (" and its first output (the picture's link expires)" if image_url else "")),
        await _create(client, flow_run_id, "table", json.dumps(job_table(job)), f"comfyflow job `{job.job_id}`"),
    ]  # fmt: skip


async def _final(runtime: Runtime, job_id: str, timeout: float = 10.0) -> Job | None:
    """The job once its worker has saved how the attempt ended (right after the flow run), or as it is."""
    deadline = time.monotonic() + timeout
    job = await runtime.store.get(job_id)
    while job is not None and not job.status.terminal and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        job = await runtime.store.get(job_id)
    return job


async def publish_attempt(
    client: PrefectClient, flow_run_id: UUID | str, ctx: AttemptContext, *, gate: Any = None
) -> list[UUID]:
    """``publish_job`` for a finished attempt of comfyflow's executor: reads the job as saved, signs a link to
    its first image with the owner's link lifetime, and attaches it all to the attempt's flow run. ``gate``: an
    async context manager held around the Prefect calls only (the executor's bound on calls in flight), not
    while waiting for the job to be saved."""
    rt = ctx.runtime
    job = await _final(rt, ctx.job.job_id)
    if job is None:
        return []
    image_url = None
    images = [a for a in (job.result.artifacts if job.result else []) if a.content_type.startswith("image/")]
    base = rt.settings.public_base_url
    if images:
        if "artifact_links" not in rt.extras:  # signs like the API does (same signing key)
            rt.extras["artifact_links"] = Links(rt.settings, rt.storage)
        signer = rt.extras["artifact_links"]
        ttl = rt.settings.limits.for_role(ctx.raw.get("role") or "internal").url_ttl_seconds
        image_url = await signer.url(base, images[0].key, ttl)
    async with gate or contextlib.nullcontext():
        return await publish_job(client, flow_run_id, job, base_url=base, image_url=image_url)


# --- batches -------------------------------------------------------------------------------------------------


def batch_table(batch: Batch) -> list[dict[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("batch", batch.batch_id), ("name", batch.name or "-"), ("status", batch.status), ("items", batch.total),
        *((f"items {state}", n) for state, n in sorted(batch.counts.items()) if n),
    ]  # fmt: skip
    if batch.finished_at is not None:
        rows.append(("took", _seconds((batch.finished_at - batch.created_at).total_seconds())))
    return [{"what": what, "value": value} for what, value in rows]


async def create_batch_progress(client: PrefectClient, flow_run_id: UUID | str, batch: Batch) -> UUID:
    """A progress artifact (0-100 %) of the batch's items finished, on the batch's flow run."""
    return await _create(client, flow_run_id, "progress", round(batch.progress * 100, 1),
                         f"Items of comfyflow batch `{batch.batch_id}` finished")  # fmt: skip


async def update_batch_progress(client: PrefectClient, artifact_id: UUID, batch: Batch) -> None:
    await client.update_artifact(artifact_id, ArtifactUpdate(data=round(batch.progress * 100, 1)))


async def publish_batch(
    client: PrefectClient, flow_run_id: UUID | str, batch: Batch, *, base_url: str, console: bool | None = None
) -> list[UUID]:
    """Attach to the batch's flow run a link to the batch and its table (counts by state, how long it took)."""
    if console is None:
        console = await links.console_served(base_url)
    page = links.batch_page(base_url, batch.batch_id, console=console)
    return [
        await _create(client, flow_run_id, "markdown", f"[batch {batch.batch_id}]({page})",
                      "The batch in comfyflow" + (" (web console)" if console else " (API resource)")),
        await _create(client, flow_run_id, "table", json.dumps(batch_table(batch)),
                      f"comfyflow batch `{batch.batch_id}`"),
    ]  # fmt: skip


class BatchArtifacts:
    """The artifacts of the running batch flow run: its progress while items run, then a link and a table.
    Failures are logged on the run, never raised: they must not stop the batch's run."""

    def __init__(self, client: PrefectClient, base_url: str) -> None:
        run_ctx = FlowRunContext.get()
        self.flow_run_id = run_ctx.flow_run.id if run_ctx and run_ctx.flow_run else None
        self.client = client
        self.base_url = base_url
        self.progress_id: UUID | None = None

    async def progress(self, batch: Batch) -> None:
        if self.flow_run_id is None:
            return
        try:
            if self.progress_id is None:
                self.progress_id = await create_batch_progress(self.client, self.flow_run_id, batch)
            else:
                await update_batch_progress(self.client, self.progress_id, batch)
        except Exception as exc:
            get_run_logger().warning("could not publish the batch's progress: %s", exc)

    async def finished(self, batch: Batch) -> None:
        if self.flow_run_id is None:
            return
        try:
            await self.progress(batch)
            await publish_batch(self.client, self.flow_run_id, batch, base_url=self.base_url)
        except Exception as exc:
            get_run_logger().warning("could not publish the batch's artifacts: %s", exc)


# --- pipeline runs -------------------------------------------------------------------------------------------


async def publish_pipeline_run(runtime: Runtime, run_id: str) -> None:
    """On the running pipeline flow run: a link to the pipeline run (its API resource) and a table of its steps
    (job, status, seed, render time). Logged, never raised: artifacts must not change how the run ends."""
    run_ctx = FlowRunContext.get()
    if run_ctx is None or run_ctx.flow_run is None:
        return
    try:
        runs = PipelineRunStore(runtime.store)
        run = await runs.get(run_id)
        if run is None:
            return
        rows = []
        for step, job_id in (await runs.steps(run_id)).items():
            job = await runtime.store.get(job_id)
            rows.append({
                "step": step, "job": job_id, "status": job.status.value if job else "expired",
                "seed": job.result.seed if job and job.result else None,
                "render": _seconds(job.durations.render if job else None),
                "outputs": len(job.result.artifacts) if job and job.result else 0,
            })  # fmt: skip
        url = f"{runtime.settings.public_base_url}/api/v1/pipeline-runs/{run_id}"
        async with get_client() as client:
            flow_run_id = run_ctx.flow_run.id
            await _create(client, flow_run_id, "markdown", f"[pipeline run {run_id}]({url})",
                          f"The {run.pipeline} run in comfyflow ({run.status.value})")  # fmt: skip
            await _create(client, flow_run_id, "table", json.dumps(rows), f"Steps of pipeline run `{run_id}`")
    except Exception as exc:
        get_run_logger().warning("could not publish the pipeline run's artifacts: %s", exc)
