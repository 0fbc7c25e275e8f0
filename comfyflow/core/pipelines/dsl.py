"""The composition API: a pipeline is an async function of a :class:`PipelineContext` and its parameters, whose
steps are comfyflow jobs. A step's artifacts feed later steps as uploads (``init_image`` of an img2img, or a
``LoadImage`` of a raw graph); fan out and fan in with :meth:`PipelineContext.all` (or ``asyncio.gather``).

Steps are durable: each step's job id is derived from the run id and the step name, so running the pipeline
function again (a resumed or retried run) finds the jobs of the steps it submitted before and waits for them
instead of rendering again. A step whose job fails makes the run wait ``retry_window`` seconds for that job to
be retried (from the Prefect UI or the API) before the run fails.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from comfyflow.core.pipelines.runs import PipelineRunStore, RunState
from comfyflow.core.runtime import Runtime
from comfyflow.errors import ComfyflowError, ValidationError
from comfyflow.models import Img2ImgRequest, Job, JobState, Priority, RawGraphRequest, Txt2ImgRequest, parse_request

NAMESPACE = uuid.UUID("2b0c5f4e-3c1d-4f7a-9e0b-6a1f3d2c8b71")
T = TypeVar("T")


def step_job_id(run_id: str, step: str) -> str:
    """The job id of a step: the same every time the run executes that step."""
    return uuid.uuid5(NAMESPACE, f"{run_id}:{step}").hex


class StepFailed(ComfyflowError):
    """Raised when a step's job failed (or was canceled) and was not retried within the run's retry window."""

    code = "STEP_FAILED"


class RunCanceled(ComfyflowError):
    """Raised inside a pipeline when its run was canceled."""

    code = "CANCELED"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StepOutput:
    """A finished step: its job (with the artifacts it stored)."""

    name: str
    job: Job

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def artifacts(self) -> list[Any]:
        return list(self.job.result.artifacts) if self.job.result else []

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) the step asked for, when its request has them."""
        w, h = self.job.request.get("width"), self.job.request.get("height")
        return (int(w), int(h)) if isinstance(w, int) and isinstance(h, int) else None

    def summary(self) -> dict[str, Any]:
        return {"step": self.name, "job_id": self.job_id, "artifacts": [a.key for a in self.artifacts]}


StepWrapper = Callable[[str, Callable[[], Awaitable["StepOutput"]]], Awaitable["StepOutput"]]


async def _plain(name: str, body: Callable[[], Awaitable[StepOutput]]) -> StepOutput:
    return await body()


@dataclass
class PipelineContext:
    """What a pipeline function works with: its run, and the verbs that make steps."""

    runtime: Runtime
    run_id: str
    pipeline: str
    owner: str = "local"
    priority: Priority = Priority.NORMAL
    labels: list[str] = field(default_factory=list)
    role: str | None = None
    retry_window: float = 600.0
    #: True when a user retried the run: failed steps' jobs are retried instead of waited for.
    resume_failed: bool = False
    #: Wraps each step (the Prefect runner makes each a task run); the plain default just runs it.
    wrap_step: StepWrapper = _plain
    #: More fields for every step's job hash (the caller's role and retention, from the API's policy).
    job_extra: dict[str, Any] = field(default_factory=dict)
    #: (counter key, limit) of the caller's daily job quota, counted per step (None = unlimited).
    daily_quota: tuple[str, int] | None = None
    poll_max: float = 0.5
    _names: set[str] = field(default_factory=set)
    _waiting: set[str] = field(default_factory=set)

    @functools.cached_property
    def store(self) -> PipelineRunStore:
        return PipelineRunStore(self.runtime.store)

    # --- steps ------------------------------------------------------------------------------------------

    async def step(self, name: str, request: Any) -> StepOutput:
        """Run one generation as a step: submit its job (once per run), wait for it, return its output.

        Args:
            name: unique within the run; it names the step's job (and the task run in Prefect).
            request: a job request model (txt2img, img2img, raw graph) or a dict of one.
        Raises:
            StepFailed: the job failed and was not retried within the retry window.
            RunCanceled: the run was canceled.
        """
        if name in self._names:
            raise ValidationError(f"step name {name!r} is used twice in pipeline {self.pipeline!r}; names are unique")
        self._names.add(name)
        req = parse_request(request) if isinstance(request, dict) else request
        return await self.wrap_step(name, lambda: self._run_step(name, req))

    async def _run_step(self, name: str, req: Any) -> StepOutput:
        rt = self.runtime
        job_id = step_job_id(self.run_id, name)
        job = await rt.store.get(job_id)
        if job is None and await self._canceled():
            raise RunCanceled(f"pipeline run {self.run_id} was canceled")
        if job is None:
            labels = [f"pipeline-run:{self.run_id}", f"step:{name}", *self.labels, *req.labels][:20]
            req = req.model_copy(update={"labels": labels, "priority": self.priority})
            extra = {**self.job_extra, "pipeline_run": self.run_id, "step": name}
            out = await rt.store.submit(req, owner=self.owner, job_id=job_id, extra=extra, daily_quota=self.daily_quota)
            if out.outcome == "quota":
                limit = self.daily_quota[1] if self.daily_quota else 0
                raise StepFailed(
                    f"step {name!r}: the daily job quota of {limit} is used up; retry the run after 00:00 UTC",
                    details={"step": name, "limit": limit},
                )
            job = out.job
            if job is None:
                raise StepFailed(f"step {name!r}: its job could not be created ({out.outcome})")
        await self.store.add_step(self.run_id, name, job_id)
        if self.resume_failed and job.status in (JobState.FAILED, JobState.CANCELED):
            await rt.store.retry(job_id)
        return StepOutput(name, await self._wait(name, job_id))

    async def _wait(self, name: str, job_id: str) -> Job:
        rt = self.runtime
        delay = 0.05
        failed_since: float | None = None
        while True:
            state = await rt.redis.hget(rt.store.keys.job(job_id), "state")
            state = state.decode() if isinstance(state, bytes) else state
            if state is None:
                raise StepFailed(f"step {name!r}: job {job_id} no longer exists", details={"step": name})
            if state in (JobState.SUCCEEDED.value, JobState.EXPIRED.value):
                await self._resolved(name)
                job = await rt.store.get(job_id)
                assert job is not None
                return job
            if await self._canceled():
                raise RunCanceled(f"pipeline run {self.run_id} was canceled")
            if state in (JobState.FAILED.value, JobState.CANCELED.value):
                if failed_since is None:
                    failed_since = time.monotonic()
                    await self._blocked(name, job_id, state)
                elif time.monotonic() - failed_since > self.retry_window:
                    job = await rt.store.get(job_id)
                    err = job.error if job else None
                    raise StepFailed(
                        f"step {name!r} {state}: {err.message if err else 'canceled'} (not retried within "
                        f"{self.retry_window:.0f}s)",
                        details={"step": name, "job_id": job_id, "error": err.model_dump() if err else None},
                    )
            elif failed_since is not None:
                failed_since = None
                await self._resolved(name)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max)

    async def _canceled(self) -> bool:
        return await self.runtime.redis.hget(self.runtime.store.keys.pipeline_run(self.run_id), "cancel") in (b"1", "1")

    async def _blocked(self, name: str, job_id: str, state: str) -> None:
        self._waiting.add(name)
        await self.store.set_status(
            self.run_id, RunState.WAITING,
            message=f"step {name!r} {state}; retry its job {job_id} (Prefect UI, or POST /api/v1/jobs/{job_id}/retry) "
            f"within {self.retry_window:.0f}s and the run goes on",
        )  # fmt: skip

    async def _resolved(self, name: str) -> None:
        if name in self._waiting:
            self._waiting.discard(name)
            if not self._waiting:
                await self.store.set_status(self.run_id, RunState.RUNNING, message="")

    # --- verbs ------------------------------------------------------------------------------------------

    async def txt2img(self, name: str, **fields: Any) -> StepOutput:
        return await self.step(name, Txt2ImgRequest(**fields))

    async def img2img(self, name: str, source: StepOutput, *, index: int = 0, **fields: Any) -> StepOutput:
        """An img2img step whose input image is artifact ``index`` of ``source``."""
        init = await self.upload(source, index)
        return await self.step(name, Img2ImgRequest(init_image=init, **fields))

    async def upscale(
        self, name: str, source: StepOutput, *, scale: float = 2.0, denoise: float = 0.3, index: int = 0, **fields: Any
    ) -> StepOutput:
        """An img2img at ``scale`` times the source's size (capped at 2048 px a side) with a light denoise."""
        w, h = source.size or (512, 512)
        width, height = (min(2048, max(64, round(v * scale / 8) * 8)) for v in (w, h))
        base = {k: source.job.request[k] for k in ("prompt", "negative_prompt", "model") if source.job.request.get(k)}
        merged = {**base, "width": width, "height": height, "denoise": denoise, **fields}
        return await self.img2img(name, source, index=index, **merged)

    async def workflow(
        self, name: str, graph: dict[str, Any], *, inputs: Mapping[str, StepOutput | tuple[StepOutput, int]] = {}
    ) -> StepOutput:
        """A raw ComfyUI graph step, written by the pipeline's author (so trusted: users do not send it).

        ``inputs`` maps ``LoadImage`` node ids to earlier steps' artifacts (fan-in): each artifact is put in the
        input folder of every backend under a name derived from it, and the node loads that file.
        """
        nodes = {k: {**v, "inputs": dict(v.get("inputs", {}))} for k, v in graph.items()}
        if inputs and await self._canceled():
            raise RunCanceled(f"pipeline run {self.run_id} was canceled")
        for node_id, src in inputs.items():
            step, index = src if isinstance(src, tuple) else (src, 0)
            if node_id not in nodes or nodes[node_id].get("class_type") != "LoadImage":
                raise ValidationError(f"inputs[{node_id!r}] must name a LoadImage node of the graph")
            nodes[node_id]["inputs"]["image"] = await self._backend_input(step, index)
        return await self.step(name, RawGraphRequest.model_validate({"workflow": nodes}))

    async def _backend_input(self, source: StepOutput, index: int) -> str:
        upload_id = await self.upload(source, index)
        data = await self.runtime.storage.get(f"uploads/{self.owner}/{upload_id}")
        names = await asyncio.gather(
            *(b.upload_image(data, f"comfyflow_{upload_id}.png") for b in self.runtime.backends.values())
        )
        return names[0]

    async def upload(self, source: StepOutput, index: int = 0) -> str:
        """Artifact ``index`` of ``source`` as one of the owner's uploads (``uploads/<owner>/<id>``); returns
        the upload id. The same artifact always gives the same id, and is copied once."""
        arts = source.artifacts
        if not 0 <= index < len(arts):
            raise ValidationError(f"step {source.name!r} has {len(arts)} artifact(s); there is no index {index}")
        upload_id = uuid.uuid5(NAMESPACE, f"{self.run_id}:{source.name}:{index}").hex
        storage = self.runtime.storage
        key = f"uploads/{self.owner}/{upload_id}"
        if await storage.info(key) is None:
            art = arts[index]
            await storage.put(key, await storage.get(art.key), content_type=art.content_type)
        return upload_id

    async def all(self, *aws: Awaitable[T]) -> list[T]:
        """Run steps concurrently (fan-out); if one fails the others are cancelled, and the error propagates."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_as_coro(a)) for a in aws]
        return [t.result() for t in tasks]


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


PipelineFn = Callable[[PipelineContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Pipeline:
    """A named pipeline: its function, its parameters model, and whether it needs an INTERNAL caller."""

    name: str
    fn: PipelineFn
    params: type[BaseModel] = NoParams
    description: str = ""
    internal_only: bool = False

    def validate(self, params: Mapping[str, Any] | BaseModel | None) -> BaseModel:
        """Raises pydantic.ValidationError for bad parameters."""
        if isinstance(params, BaseModel):
            return params
        return self.params.model_validate(dict(params or {}))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "internal_only": self.internal_only,
            "params": self.params.model_json_schema(),
        }

    async def start(
        self,
        runtime: Runtime,
        params: Mapping[str, Any] | BaseModel | None = None,
        *,
        owner: str = "local",
        priority: Priority | str = Priority.NORMAL,
        labels: Sequence[str] = (),
        retry_window: float = 600.0,
    ) -> str:
        """Queue a run for the workers' pipeline runners; returns its run id."""
        valid = self.validate(params)
        run = await PipelineRunStore(runtime.store).create(
            self.name, valid.model_dump(mode="json"), owner=owner, priority=Priority(priority), labels=list(labels),
            retry_window=retry_window,
        )  # fmt: skip
        return run.run_id

    async def run(
        self,
        runtime: Runtime,
        params: Mapping[str, Any] | BaseModel | None = None,
        *,
        owner: str = "local",
        priority: Priority | str = Priority.NORMAL,
        labels: Sequence[str] = (),
        retry_window: float = 600.0,
    ) -> Any:
        """Run the pipeline here, from Python, and return its finished run. The steps' jobs run on the workers
        (start some with ``comfyflow worker``); this process holds the run's lease while it runs it."""
        from comfyflow.core.pipelines.execution import execute_here

        return await execute_here(
            runtime, self, self.validate(params), owner=owner, priority=Priority(priority), labels=list(labels),
            retry_window=retry_window,
        )  # fmt: skip


def pipeline(
    name: str, *, params: type[BaseModel] = NoParams, description: str | None = None, internal_only: bool = False
) -> Callable[[PipelineFn], Pipeline]:
    """Declare a pipeline: ``@pipeline("hero-variations", params=HeroParams)`` over an async function of
    ``(PipelineContext, params)`` that returns something JSON-able (step outputs are summarised)."""

    def wrap(fn: PipelineFn) -> Pipeline:
        doc = description if description is not None else (fn.__doc__ or "").strip().split("\n\n")[0]
        return Pipeline(name, fn, params, doc, internal_only)

    return wrap
