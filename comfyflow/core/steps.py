"""The four steps of a generation, as plain async functions: validate -> acquire_slot -> render -> store.

The Prefect flow in ``flows/generate.py`` wraps each in a task; ``run_attempt`` composes them without Prefect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from comfyflow.core import routing, staging
from comfyflow.core.attempt import AttemptContext, prompt_id_for
from comfyflow.core.backend_wait import until_a_backend_can_take
from comfyflow.core.keys import PRIORITIES
from comfyflow.core.outputs import check_output
from comfyflow.core.pool import is_device_error, requirement_for
from comfyflow.core.queue import queue_depth
from comfyflow.core.slots import SlotLease
from comfyflow.core.storing import store_outputs
from comfyflow.errors import (
    BackendUnavailable,
    DeviceFailed,
    ExecutionFailed,
    GraphInvalid,
    LeaseLost,
    NoHealthyBackend,
    OutOfMemory,
    Stalled,
)
from comfyflow.models import Img2ImgRequest, JobResult, Progress, RawGraphRequest, parse_request
from comfyflow.plugins.comfyui.templates import build_graph, default_model
from comfyflow.plugins.protocols import Backend, PromptPhase

RANDOM_SEED_BOUND = 2**53  # JSON-safe in every client


@dataclass
class Prepared:
    """What validation decided; small and JSON-able so it can pass between Prefect tasks."""

    graph: dict[str, Any]
    seed: int | None
    model: str | None
    candidates: list[str]
    reference: str
    adopt_backend: str | None = None
    adopt_prompt_id: str | None = None
    adopt_phase: str | None = None
    input_name: str | None = None


@dataclass
class Staged:
    index: int
    path: str
    content_type: str
    extension: str
    size: int
    sha256: str
    kind: str
    node_id: str


@dataclass
class Rendered:
    backend: str
    prompt_id: str
    adopted: bool
    files: list[Staged] = field(default_factory=list)


def _json_field(raw: dict[str, str], name: str) -> Any:
    value = raw.get(name)
    return json.loads(value) if value else None


async def _find_previous(ctx: AttemptContext) -> tuple[str, str, PromptPhase] | None:
    """A previous attempt's prompt that finished or still runs on its backend: adopt it, never render twice."""
    for entry in reversed(_json_field(ctx.raw, "prompts") or []):
        backend = ctx.runtime.backends.get(entry["backend"])
        if backend is None:
            continue
        try:
            status = await backend.lookup(entry["prompt_id"])
        except BackendUnavailable:
            continue
        if status.phase in (PromptPhase.SUCCEEDED, PromptPhase.RUNNING, PromptPhase.PENDING):
            return entry["backend"], entry["prompt_id"], status.phase
    return None


def _failed_backend(ctx: AttemptContext) -> str | None:
    """The backend whose transient failure ended the previous attempt (avoided when another can run the job)."""
    last = _json_field(ctx.raw, "last_error") or {}
    details = last.get("details")
    return details.get("backend") if isinstance(details, dict) else None


async def _candidates(ctx: AttemptContext, graph: dict[str, Any]) -> list[str]:
    """The healthy backends that have the graph's models, node classes and the job's ``backend:`` labels.

    Raises:
        GraphInvalid: no backend of the pool has them (checked again with fresh capabilities first).
        BackendUnavailable: the backends that have them are down or quarantined (transient).
    """
    pool, avoid = ctx.runtime.pool, _failed_backend(ctx)
    states = await routing.described(pool)
    req = requirement_for(graph, job_labels=ctx.job.labels, known_models=(await pool.view()).model_names)
    try:
        return routing.candidates(states, req, avoid=avoid)
    except GraphInvalid:  # a model may have been added since the backends were described
        return routing.candidates(await routing.described(pool, refresh=True), req, avoid=avoid)


async def validate_step(ctx: AttemptContext) -> Prepared:
    """Parse the request, fix the seed, build the graph and check it against a backend's /object_info.
    While no healthy backend can take the job yet, waits (bounded, visible, using no attempt).

    Raises:
        GraphInvalid / ValidationError: permanent, the job fails at once.
        BackendUnavailable: no backend answered within COMFYFLOW_BACKEND_WAIT_SECONDS (transient).
    """
    return await until_a_backend_can_take(ctx, lambda: _validate(ctx))


async def _validate(ctx: AttemptContext) -> Prepared:
    request = parse_request(ctx.job.request)
    seed: int | None = None
    if not isinstance(request, RawGraphRequest):
        seed = int(ctx.raw["seed"]) if ctx.raw.get("seed") else request.seed
        if seed < 0:
            seed = secrets.randbelow(RANDOM_SEED_BOUND)
        if not ctx.raw.get("seed"):
            await ctx.update(seed=seed)
    previous = await _find_previous(ctx)
    model: str | None = None
    prefix = f"comfyflow/{ctx.job.job_id[:12]}"
    if isinstance(request, RawGraphRequest):
        draft = request.model_dump(mode="json")["workflow"]
    else:
        model = request.model
        if not model:
            labels = requirement_for({}, job_labels=ctx.job.labels, known_models=frozenset()).labels
            caps = routing.default_checkpoint_source(await routing.described(ctx.runtime.pool), labels)
            if caps is None:
                raise NoHealthyBackend("No healthy backend has described its models yet; the job waits for one.")
            model = default_model(caps)
        placeholder = "comfyflow_pending.png" if isinstance(request, Img2ImgRequest) else None
        draft = build_graph(request, seed=seed or 0, model=model, filename_prefix=prefix, input_image=placeholder)
    candidates = await _candidates(ctx, draft)
    order = ([previous[0]] if previous else []) + [c for c in candidates if not previous or c != previous[0]]
    last_exc: Exception | None = None
    for url in order:
        backend = ctx.runtime.backends[url]
        graph, input_name = draft, None
        try:
            if isinstance(request, Img2ImgRequest):
                input_name = await _upload_input(ctx, backend, request.init_image)
                graph = build_graph(
                    request, seed=seed or 0, model=model, filename_prefix=prefix, input_image=input_name
                )
            await backend.validate(graph)
        except BackendUnavailable as exc:
            last_exc = exc
            await ctx.runtime.pool.report_failure(url, exc)
            continue
        prepared = Prepared(graph, seed, model, candidates, url, input_name=input_name)
        if previous:
            prepared.adopt_backend, prepared.adopt_prompt_id, prepared.adopt_phase = previous
        return prepared
    raise BackendUnavailable(
        f"None of the backends answered ({', '.join(order)}): {last_exc}", details={"backends": order}
    )


async def _upload_input(ctx: AttemptContext, backend: Backend, upload_id: str) -> str:
    data = await ctx.runtime.storage.get(f"uploads/{ctx.job.owner}/{upload_id}")
    return await backend.upload_image(data, f"comfyflow_{upload_id}.png")


async def acquire_step(ctx: AttemptContext, prepared: Prepared) -> SlotLease | None:
    """Take a GPU slot on the least-loaded candidate. Adopting a previous attempt's prompt takes over that
    attempt's slot instead (its prompt already sits in that backend's queue), or frees it when it finished."""
    slots = ctx.runtime.slots
    if prepared.adopt_backend:
        old = SlotLease(prepared.adopt_backend, ctx.raw["slot"]) if ctx.raw.get("slot") else None
        lease = None
        if prepared.adopt_phase == PromptPhase.SUCCEEDED.value:
            if old is not None:
                await slots.release(old)
        elif old is not None and await slots.renew(old):
            lease = old
        else:
            lease = await slots.try_acquire([prepared.adopt_backend])
        if lease is not None:
            ctx.leases.append(lease)
        await ctx.update(backend=prepared.adopt_backend, render_started_at=repr(time.time()),
                         slot=lease.token if lease else "")  # fmt: skip
        return lease
    if ctx.raw.get("slot") and ctx.raw.get("backend"):  # a crashed attempt's slot, not adopted: free it now
        await slots.release(SlotLease(ctx.raw["backend"], ctx.raw["slot"]))
    await ctx.progress(Progress(value=0.0, phase="waiting_for_gpu"), force=True)
    lease = await routing.acquire(
        ctx.runtime.pool, slots, prepared.candidates, timeout=ctx.runtime.settings.render_timeout_seconds,
        higher_waiting=_higher_priority_waiting(ctx),
    )  # fmt: skip
    ctx.leases.append(lease)
    await ctx.update(backend=lease.backend, render_started_at=repr(time.time()), slot=lease.token)
    return lease


def _higher_priority_waiting(ctx: AttemptContext) -> Callable[[], Awaitable[bool]] | None:
    """For normal and low jobs: is higher-priority work waiting, unclaimed, in the queue?"""
    order = [p.value for p in PRIORITIES]
    mine = ctx.job.priority.value
    higher = order[: order.index(mine)]
    if not higher:
        return None

    async def check() -> bool:
        depth = await queue_depth(ctx.runtime.redis, ctx.runtime.store.keys)
        return any(depth.get(p, 0) > 0 for p in higher)

    return check


async def render_step(ctx: AttemptContext, prepared: Prepared, lease: SlotLease | None) -> Rendered:
    """Queue the graph on the leased backend (or attach to the previous attempt's prompt), wait for it, and
    fetch every output file into the local staging folder. Releases the slot as soon as the prompt has left
    ComfyUI's queue."""
    settings = ctx.runtime.settings
    url = prepared.adopt_backend or (lease.backend if lease else prepared.reference)
    backend = ctx.runtime.backends[url]
    adopted = prepared.adopt_prompt_id is not None
    pid = prepared.adopt_prompt_id or prompt_id_for(ctx.job.job_id, ctx.claim.attempt)
    try:
        if not adopted:
            # Record the prompt before posting it, so a crash after the POST still lets the next attempt find it.
            prompts = (_json_field(ctx.raw, "prompts") or []) + [
                {"backend": url, "prompt_id": pid, "attempt": ctx.claim.attempt}
            ]
            await ctx.update(prompts=prompts)
            ctx.raw["prompts"] = json.dumps(prompts)
            if prepared.input_name and url != prepared.reference:
                await _upload_input(ctx, backend, parse_request(ctx.job.request).init_image)  # type: ignore[union-attr]
        ctx.prompt_on_backend = True
        outputs = await _render(ctx, backend, prepared, pid)
        ctx.prompt_on_backend = False
        if ctx.execution_started is not None and not adopted:  # how fast this backend renders (its queue depth)
            ctx.runtime.slots.observe_render(url, time.monotonic() - ctx.execution_started)
        # The prompt has left ComfyUI's queue: its slot goes to the next prompt now, not after the fetch, so the
        # GPU's queue is refilled while this attempt downloads its outputs.
        held, lease = lease, None
        await _release(ctx, held)
        await ctx.progress(Progress(value=0.96, phase="fetching"), force=True)
        staged = await _fetch_all(ctx, backend, pid, outputs, settings.max_output_bytes)
    except LeaseLost:
        ctx.stop_reason = ctx.stop_reason or "lost"
        raise
    finally:
        if not ctx.slot_stays_taken:  # else kept for the next attempt (see attempt.py)
            await _release(ctx, lease)
    await ctx.update(render_finished_at=repr(time.time()))
    return Rendered(url, pid, adopted and prepared.adopt_phase == PromptPhase.SUCCEEDED.value, staged)


async def _release(ctx: AttemptContext, lease: SlotLease | None) -> None:
    if lease is None:
        return
    if lease in ctx.leases:  # first, so a heartbeat renewing it meanwhile knows it is being released
        ctx.leases.remove(lease)
    with contextlib.suppress(Exception):
        await asyncio.shield(ctx.runtime.slots.release(lease))


async def _render(ctx: AttemptContext, backend: Backend, prepared: Prepared, pid: str) -> list[Any]:
    settings = ctx.runtime.settings
    try:
        async with asyncio.timeout(settings.render_timeout_seconds):
            render = backend.render(
                prepared.graph, pid, on_event=ctx.on_render_event, stall_timeout=settings.stall_timeout_seconds
            )
            return await ctx.runtime.pool.guard(backend.url, pid, render)  # moves it if the backend is drained
    except asyncio.CancelledError:
        if ctx.stop_reason == "canceled":  # only a user's cancel stops the GPU; a lost or shut-down worker
            with contextlib.suppress(Exception):  # leaves the prompt running for the next attempt to adopt
                await asyncio.shield(backend.cancel(pid))
        raise
    except TimeoutError as exc:
        with contextlib.suppress(Exception):
            await backend.cancel(pid)
        raise Stalled(
            f"render took longer than {settings.render_timeout_seconds:.0f}s (COMFYFLOW_RENDER_TIMEOUT_SECONDS)",
            details={"backend": backend.url, "prompt_id": pid},
        ) from exc
    except OutOfMemory as exc:
        with contextlib.suppress(Exception):
            await backend.free()
        last = _json_field(ctx.raw, "last_error") or {}
        if last.get("code") == OutOfMemory.code:
            raise ExecutionFailed(
                f"out of memory again after /free: {exc.message}. Lower width/height or batch_size.",
                details={**(exc.details if isinstance(exc.details, dict) else {}), "backend": backend.url},
            ) from exc
        exc.details = {**(exc.details if isinstance(exc.details, dict) else {}), "backend": backend.url}
        raise
    except BackendUnavailable as exc:
        await ctx.runtime.pool.report_failure(backend.url, exc)  # a passive health check
        raise
    except ExecutionFailed as exc:
        if not is_device_error(exc):
            raise
        await ctx.runtime.pool.quarantine(backend.url, exc.message[:300])
        raise DeviceFailed(
            f"the GPU of {backend.url} failed ({exc.message[:300]}); the backend is quarantined until it passes "
            "health checks again, and the job moves to another backend",
            details={**(exc.details if isinstance(exc.details, dict) else {}), "backend": backend.url},
        ) from exc


async def _fetch_all(ctx: AttemptContext, backend: Backend, pid: str, outputs: list[Any], cap: int) -> list[Staged]:
    """Stream each output into the staging folder (hashed on the way, at most ``cap`` bytes), then check it there.
    About one chunk of an output is in memory at a time; the staged files go at the end of the attempt."""
    folder = staging.attempt_folder(ctx.runtime.staging, ctx.job.job_id, ctx.claim.attempt)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    staged = []
    for index, ref in enumerate(outputs):
        name = f"output {index} ({ref.node_id})"
        async with backend.open_output(ref, max_bytes=cap) as stream:
            path = folder / f"{index}.{stream.extension}"
            written = await staging.write_stream(stream.chunks, path, max_bytes=cap, name=name)
        await asyncio.to_thread(  # CPU work (Pillow), off the loop that also runs heartbeats
            check_output, path, stream.content_type, max_pixels=ctx.runtime.settings.max_output_pixels, name=name
        )
        staged.append(
            Staged(
                index, str(path), stream.content_type, stream.extension, written.size, written.sha256, ref.kind,
                ref.node_id,
            )
        )  # fmt: skip
    return staged


async def store_step(ctx: AttemptContext, prepared: Prepared, rendered: Rendered) -> JobResult:
    """Write every file and metadata.json to storage, verify them, then clean the staging folder."""
    await ctx.progress(Progress(value=0.98, phase="storing"), force=True)
    result = await store_outputs(ctx, prepared, rendered)
    await asyncio.to_thread(staging.remove_attempt, ctx.runtime.staging, ctx.job.job_id, ctx.claim.attempt)
    return result


async def run_attempt(ctx: AttemptContext) -> JobResult:
    """The whole attempt without Prefect (used when COMFYFLOW_PREFECT_ENABLED=false, and by tests)."""
    prepared = await validate_step(ctx)
    lease = await acquire_step(ctx, prepared)
    rendered = await render_step(ctx, prepared, lease)
    return await store_step(ctx, prepared, rendered)
