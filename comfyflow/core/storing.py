"""Storing a finished render: artifacts under ``jobs/{job_id}/{attempt}/{index}.{ext}``, then ``metadata.json``.
Artifacts are streamed from their staged files (``Storage.put_file``), never read into memory whole.

Every write is retried with backoff while storage is down, within ``store_timeout_seconds``; every file is
verified (size and sha256) before the job may be marked succeeded, so a job never succeeds without its files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from comfyflow import metrics
from comfyflow.errors import StorageError
from comfyflow.models import Artifact, JobResult
from comfyflow.plugins.protocols import Storage, StoredObject

if TYPE_CHECKING:
    from comfyflow.core.attempt import AttemptContext
    from comfyflow.core.steps import Prepared, Rendered


def attempt_prefix(job_id: str, attempt: int) -> str:
    """Each attempt stores under its own folder, so a stale attempt storing late can never overwrite the files
    that the job's result points to (they belong to the attempt that committed)."""
    return f"jobs/{job_id}/{attempt}"


def artifact_key(job_id: str, attempt: int, index: int, extension: str) -> str:
    return f"{attempt_prefix(job_id, attempt)}/{index}.{extension}"


def metadata_key(job_id: str, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}/metadata.json"


async def drop_other_attempts(storage: Storage, job_id: str, result: JobResult) -> int:
    """After a commit: delete what earlier attempts stored without committing (killed after their put)."""
    keep = {a.key for a in result.artifacts} | {result.metadata_key}
    folders = {k.rsplit("/", 1)[0] for k in await storage.list(f"jobs/{job_id}") if k not in keep}
    keep_folders = {k.rsplit("/", 1)[0] for k in keep if k}
    removed = 0
    for folder in sorted(folders - keep_folders):
        removed += await storage.delete_prefix(folder)
    return removed


async def _put_verified(
    ctx: AttemptContext, key: str, write: Callable[[], Awaitable[StoredObject]], size: int, sha256: str
) -> StoredObject:
    """Run ``write`` (one put) until storage answers with what was meant: ``size`` bytes of digest ``sha256``."""
    timeout = ctx.runtime.settings.store_timeout_seconds
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(StorageError),
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
        after=lambda _: ctx.runtime.metrics.add(metrics.STORAGE_ERRORS),  # every failed or unverified write
    ):
        with attempt:
            try:
                async with asyncio.timeout(ctx.runtime.settings.storage_call_timeout_seconds):
                    stored = await write()
            except TimeoutError as exc:  # a hung S3 (e.g. never answering a PUT's 100-continue) times nothing out
                raise StorageError(
                    f"{key}: storage did not answer within {ctx.runtime.settings.storage_call_timeout_seconds:g}s "
                    "(COMFYFLOW_STORAGE_CALL_TIMEOUT_SECONDS)",
                    details={"key": key},
                ) from exc
            if stored.size != size or stored.sha256 != sha256:
                raise StorageError(
                    f"{key}: stored {stored.size} bytes (sha256 {stored.sha256[:12]}), expected {size} "
                    f"bytes (sha256 {sha256[:12]})",
                    details={"key": key},
                )
    ctx.runtime.metrics.add(metrics.STORAGE_BYTES, value=size)
    return stored


async def store_outputs(ctx: AttemptContext, prepared: Prepared, rendered: Rendered) -> JobResult:
    job_id = ctx.job.job_id
    started = time.time()
    artifacts: list[Artifact] = []
    storage = ctx.runtime.storage
    for f in rendered.files:
        key = artifact_key(job_id, ctx.claim.attempt, f.index, f.extension)
        put_staged = partial(storage.put_file, key, f.path, content_type=f.content_type, sha256=f.sha256)
        await _put_verified(ctx, key, put_staged, f.size, f.sha256)
        art = Artifact(
            index=f.index, key=key, content_type=f.content_type, size=f.size, sha256=f.sha256, kind=f.kind,
            node_id=f.node_id,
        )  # fmt: skip
        artifacts.append(art)
        await ctx.update(event=("artifact", art.model_dump(exclude={"url"})))
    result = JobResult(
        artifacts=artifacts,
        seed=prepared.seed,
        backend=rendered.backend,
        prompt_id=rendered.prompt_id,
        metadata_key=metadata_key(job_id, ctx.claim.attempt),
        adopted=rendered.adopted,
    )
    meta = _metadata(ctx, prepared, result, started)
    body = json.dumps(meta, indent=2, sort_keys=True, default=str).encode()
    meta_key = metadata_key(job_id, ctx.claim.attempt)
    await _put_verified(
        ctx, meta_key, lambda: storage.put(meta_key, body, content_type="application/json"), len(body),
        hashlib.sha256(body).hexdigest(),
    )  # fmt: skip
    return result


def _metadata(ctx: AttemptContext, prepared: Prepared, result: JobResult, store_started: float) -> dict[str, Any]:
    raw = ctx.raw
    return {
        "job_id": ctx.job.job_id,
        "attempt": ctx.claim.attempt,
        "request": ctx.job.request,
        "seed": result.seed,
        "model": prepared.model,
        "backend": result.backend,
        "prompt_id": result.prompt_id,
        "adopted": result.adopted,
        "timings": {
            "created_at": raw.get("created_at"),
            "started_at": raw.get("started_at"),
            "render_started_at": raw.get("render_started_at"),
            "store_started_at": store_started,
        },
        "artifacts": [a.model_dump(exclude={"url"}) for a in result.artifacts],
    }
