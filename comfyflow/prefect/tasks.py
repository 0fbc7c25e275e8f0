"""Prefect tasks that call a comfyflow API: ``generate``, ``img2img``, ``submit_batch``, ``wait_for_batch``.

Each takes a :class:`ComfyflowCredentials` block first (as prefect-aws and prefect-dbt tasks take theirs), calls
the API through comfyflow's Python client, and returns a small typed result. A job is submitted with an
Idempotency-Key made of the flow run and the task run, both of which stay the same when Prefect retries the task,
so a retried task finds the job it submitted before instead of rendering again. Only transient errors (see
``errors.py``) are retried; set ``retries`` with ``.with_options(retries=...)``.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import acreate_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel

from comfyflow.client import AsyncClient
from comfyflow.models import Job, JobState
from comfyflow.prefect import links
from comfyflow.prefect.credentials import ComfyflowCredentials
from comfyflow.prefect.errors import BatchFailed, JobFailed, retry_if_transient
from comfyflow.prefect.results import BatchResult, BatchSubmission, GenerationResult

TASK_OPTS: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_condition_fn": retry_if_transient,
    "cache_policy": NO_CACHE,  # the Idempotency-Key is what makes a retry safe, not Prefect's result cache
}
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
#: Input images this process uploaded, by the Idempotency-Key of the job they are for: a retried task (Prefect
#: retries a task in the same process) sends the same upload id, so its request matches the first one.
_uploads: OrderedDict[str, str] = OrderedDict()
Image = GenerationResult | str | bytes | os.PathLike[str]


def run_idempotency_key(kind: str) -> str | None:
    """``prefect-<kind>-<flow run id>-<task run id>`` for the running task (None outside a task run). Both ids
    stay the same across Prefect's retries of that task run."""
    ctx = TaskRunContext.get()
    if ctx is None:
        return None
    return f"prefect-{kind}-{ctx.task_run.flow_run_id}-{ctx.task_run.id}"


async def _link(what: str, url: str, description: str) -> None:
    """A link artifact in the calling task run (the caller's Prefect server), when there is one."""
    if TaskRunContext.get() is not None:
        await acreate_link_artifact(link=url, link_text=f"{what} in comfyflow", description=description)


async def _finished(
    client: AsyncClient, job: Job, credentials: ComfyflowCredentials, timeout: float
) -> GenerationResult:
    logger = get_run_logger()
    console = await links.console_served(credentials.url)
    page = links.job_page(credentials.url, job.job_id, console=console)
    logger.info("comfyflow job %s is %s: %s", job.job_id, job.status.value, page)
    await _link(f"job {job.job_id[:12]}", page, f"comfyflow job `{job.job_id}`")
    if not job.status.terminal:
        job = await client.wait(job.job_id, timeout=timeout)
    if job.status != JobState.SUCCEEDED:
        raise JobFailed(job.job_id, job.status.value, job.error)
    result = GenerationResult.from_job(job, credentials.url)
    logger.info("comfyflow job %s succeeded: seed %s, %d output(s) from %s", job.job_id, result.seed,
                len(result.artifacts), result.backend)  # fmt: skip
    return result


def _body(request: BaseModel | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(request, BaseModel):
        body = request.model_dump(mode="json")
    else:
        body = dict(request or {})
    body.update(fields)
    return body


@task(name="comfyflow-generate", **TASK_OPTS)
async def generate(
    credentials: ComfyflowCredentials,
    request: BaseModel | Mapping[str, Any] | None = None,
    *,
    timeout: float = 1800.0,
    idempotency_key: str | None = None,
    **fields: Any,
) -> GenerationResult:
    """Generate an image (a txt2img request, or any job request) and wait until it is done.

    Args:
        credentials: where the API is and its key.
        request: a request model (``Txt2ImgRequest``...) or a dict of its fields; keywords are laid over it,
            e.g. ``generate(credentials, prompt="a red fox", steps=20, seed=42)``.
        timeout: seconds to wait for the job (a retry waits again for the same job).
        idempotency_key: a key of your own instead of the flow run + task run one.
    Returns:
        The finished job: id, seed, backend, durations and links to its outputs.
    Raises:
        JobFailed: the job failed or was canceled (not retried).
        comfyflow.client errors: the API's answer (only transient ones are retried).
    """
    key = idempotency_key or run_idempotency_key("generate")
    async with credentials.get_client() as client:
        job = await client.submit(_body(request, fields), idempotency_key=key)
        return await _finished(client, job, credentials, timeout)


async def _upload(client: AsyncClient, image: Image, key: str | None, index: int) -> str:
    if key and key in _uploads:
        return _uploads[key]
    if isinstance(image, GenerationResult):
        fresh = await client.get(image.job_id)  # fresh links: the ones in the result may have expired
        arts = fresh.result.artifacts if fresh.result else []
        if not 0 <= index < len(arts):
            raise ValueError(f"job {image.job_id} has {len(arts)} output(s); there is no index {index}")
        data: bytes | str | os.PathLike[str] = await client.download(arts[index])
    elif isinstance(image, str) and UPLOAD_ID.match(image):
        return image  # already an upload id
    elif isinstance(image, str) and image.startswith(("http://", "https://")):
        data = await client.download(image)
    else:
        data = image  # bytes or a file path
    upload_id = (await client.upload(data)).upload_id
    if key:
        _uploads[key] = upload_id
        while len(_uploads) > 1024:
            _uploads.popitem(last=False)
    return upload_id


@task(name="comfyflow-img2img", **TASK_OPTS)
async def img2img(
    credentials: ComfyflowCredentials,
    image: Image,
    request: BaseModel | Mapping[str, Any] | None = None,
    *,
    image_index: int = 0,
    timeout: float = 1800.0,
    idempotency_key: str | None = None,
    **fields: Any,
) -> GenerationResult:
    """Transform an image (img2img) and wait until it is done.

    Args:
        image: a previous task's GenerationResult (output ``image_index`` of it), an upload id, an artifact URL,
            a file path or bytes. It is uploaded once, also when the task is retried.
        request / fields: the rest of the img2img request, e.g. ``prompt="...", denoise=0.5``.
    Returns and raises as ``generate``.
    """
    key = idempotency_key or run_idempotency_key("img2img")
    async with credentials.get_client() as client:
        body = {**_body(request, fields), "kind": "img2img"}
        body["init_image"] = await _upload(client, image, key, image_index)
        job = await client.submit(body, idempotency_key=key)
        return await _finished(client, job, credentials, timeout)


@task(name="comfyflow-submit-batch", **TASK_OPTS)
async def submit_batch(
    credentials: ComfyflowCredentials,
    items: list[Mapping[str, Any]] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    sweep: Mapping[str, list[Any]] | None = None,
    image: Image | None = None,
    image_index: int = 0,
    name: str | None = None,
    priority: str | None = None,
    labels: list[str] | None = None,
    idempotency_key: str | None = None,
) -> BatchSubmission:
    """Queue a batch: ``items`` (job requests), or ``base`` with a ``sweep`` (a cartesian product of values).

    With ``image``, every item is an img2img of that image (uploaded once), e.g. a batch of upscales::

        submit_batch(credentials, base={"prompt": "...", "width": 1024, "height": 1024, "denoise": 0.3},
                     sweep={"seed": [1, 2, 3]}, image=variation)
    """
    key = idempotency_key or run_idempotency_key("batch")
    body: dict[str, Any] = {k: v for k, v in {"name": name, "priority": priority, "labels": labels}.items() if v}
    async with credentials.get_client() as client:
        extra: dict[str, Any] = {}
        if image is not None:
            extra = {"kind": "img2img", "init_image": await _upload(client, image, key, image_index)}
        if items is not None:
            body["items"] = [{**dict(item), **extra} for item in items]
        else:
            body.update(base={**dict(base or {}), **extra}, sweep=dict(sweep or {}))
        batch = await client.submit_batch(body, idempotency_key=key)
    console = await links.console_served(credentials.url)
    page = links.batch_page(credentials.url, batch.batch_id, console=console)
    get_run_logger().info("comfyflow batch %s: %d item(s) queued: %s", batch.batch_id, batch.total, page)
    await _link(f"batch {batch.batch_id[:12]}", page, f"comfyflow batch `{batch.batch_id}` ({batch.total} items)")
    return BatchSubmission(batch_id=batch.batch_id, total=batch.total, status=batch.status,
                           batch_url=f"{credentials.url}/api/v1/batches/{batch.batch_id}")  # fmt: skip


@task(name="comfyflow-wait-for-batch", **TASK_OPTS)
async def wait_for_batch(
    credentials: ComfyflowCredentials,
    batch: BatchSubmission | str,
    *,
    max_wait_seconds: float = 3600.0,
    poll_frequency_seconds: float = 2.0,
    raise_on_failure: bool = True,
) -> BatchResult:
    """Wait until no item of the batch is queued or running; return every item with its seed and links.

    Raises:
        BatchFailed: some items failed, or the batch was canceled (unless ``raise_on_failure=False``).
        BatchTimeout: still running after ``max_wait_seconds`` (retried: the wait starts again).
    """
    batch_id = batch if isinstance(batch, str) else batch.batch_id
    async with credentials.get_client() as client:
        done = await client.wait_batch(batch_id, timeout=max_wait_seconds, every=poll_frequency_seconds)
        items = [item async for item in client.batch_items(batch_id)]
    get_run_logger().info("comfyflow batch %s ended %s: %s", batch_id, done.status, done.counts)
    if raise_on_failure and done.status != "succeeded":
        raise BatchFailed(batch_id, done.status, done.counts)
    return BatchResult.from_batch(done, items, credentials.url)
