"""Shared vocabulary: job states, requests, jobs, artifacts and events.

The API validates request bodies with these models, and the flows take the same models, so there is one
definition of what a valid generation is.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

#: ComfyUI 0.8.0's own KSampler names (captured /object_info); the seed's defaults were names ComfyUI rejects.
SAMPLERS: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
SCHEDULERS: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)  # fmt: skip
MAX_SEED = 2**64 - 1
MAX_PIXELS = 4 * 1024 * 1024
RANDOM_SEED = -1


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobState(StrEnum):
    """Where a job is in its life. Terminal states never change, except succeeded -> expired by retention."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, allow_inf_nan=False)

    priority: Priority = Field(default=Priority.NORMAL, description="Queue class: high, normal or low.")
    labels: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=20, description="Free-form strings kept with the job."
    )
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        description="http(s) URL notified (signed, per Standard Webhooks) when the job starts, passes 25/50/75 %, "
        "and ends; see GET /api/v1/jobs/{id}/webhooks.",
    )

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
            raise ValueError(f"webhook {value[:100]!r} must be an http or https URL, e.g. https://example.com/hooks")
        if parts.username or parts.password:
            raise ValueError("webhook must not carry credentials in the URL; verify the signature instead")
        return value


def _check_text(value: str, field: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{field} contains a NUL character; remove it")
    return value


class Txt2ImgRequest(_Common):
    """Text to image with a checkpoint model (the seed's parameters and limits)."""

    kind: Literal["txt2img"] = "txt2img"
    prompt: str = Field(min_length=1, max_length=5000, description="What to draw.")
    negative_prompt: str = Field(default="", max_length=5000, description="What to avoid.")
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    cfg_scale: float = Field(default=7.0, ge=1.0, le=30.0)
    sampler: str = Field(default="euler", description="A ComfyUI sampler name, e.g. euler, dpmpp_2m.")
    scheduler: str = Field(default="normal", description="A ComfyUI scheduler name, e.g. normal, karras.")
    seed: int = Field(default=RANDOM_SEED, ge=RANDOM_SEED, le=MAX_SEED, description="-1 picks one at random.")
    model: str | None = Field(
        default=None, min_length=1, max_length=255, description="Checkpoint file name; unset = the first one."
    )
    batch_size: int = Field(default=1, ge=1, le=10, description="Images per job.")

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _no_nul(cls, value: str, info: Any) -> str:
        return _check_text(value, info.field_name)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}; use one of ComfyUI's: {', '.join(SAMPLERS)}")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r}; use one of: {', '.join(SCHEDULERS)}")
        return value

    @field_validator("model")
    @classmethod
    def _plain_model_name(cls, value: str | None) -> str | None:
        if value is not None and (".." in value or value.startswith(("/", "\\")) or "\x00" in value):
            raise ValueError(f"model {value!r} must be a checkpoint name, not a path")
        return value

    @model_validator(mode="after")
    def _megapixels(self) -> Txt2ImgRequest:
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(
                f"width x height = {self.width}x{self.height} is {self.width * self.height / 1e6:.1f} MP; "
                f"at most {MAX_PIXELS / 1e6:.1f} MP (e.g. 2048x2048) is allowed"
            )
        return self


class Img2ImgRequest(Txt2ImgRequest):
    """Image to image: an uploaded input image re-drawn with the prompt."""

    kind: Literal["img2img"] = "img2img"  # type: ignore[assignment]
    init_image: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$", description="Upload id from POST /api/v1/uploads.")
    denoise: float = Field(default=0.75, ge=0.0, le=1.0, description="How much to change the input (0..1).")


class GraphNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    class_type: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] = Field(default_factory=dict)


class RawGraphRequest(_Common):
    """A ComfyUI API-format graph, run as given (INTERNAL callers only; node classes checked)."""

    kind: Literal["workflow"] = "workflow"
    workflow: dict[Annotated[str, Field(min_length=1, max_length=64)], GraphNode] = Field(min_length=1, max_length=1000)

    @field_validator("workflow")
    @classmethod
    def _no_paths(cls, graph: dict[str, GraphNode]) -> dict[str, GraphNode]:
        for node_id, node in graph.items():
            for name, value in node.inputs.items():
                if isinstance(value, str) and _looks_like_path_escape(value):
                    raise ValueError(
                        f"node {node_id} ({node.class_type}) input {name!r} = {value!r} is a path outside "
                        "ComfyUI's folders; use a plain file name"
                    )
        return graph


def _looks_like_path_escape(value: str) -> bool:
    norm = value.replace("\\", "/")
    return norm.startswith("/") or norm == ".." or norm.startswith("../") or "/../" in norm or norm.endswith("/..")


def _request_kind(body: Any) -> str:
    if isinstance(body, dict):
        if "kind" in body and body["kind"] in ("txt2img", "img2img", "workflow"):
            return str(body["kind"])
        if "workflow" in body:
            return "workflow"
        if "init_image" in body:
            return "img2img"
        return "txt2img"
    return str(getattr(body, "kind", "txt2img"))


JobRequest = Annotated[
    Annotated[Txt2ImgRequest, Tag("txt2img")]
    | Annotated[Img2ImgRequest, Tag("img2img")]
    | Annotated[RawGraphRequest, Tag("workflow")],
    Discriminator(_request_kind),
]
JOB_REQUEST: TypeAdapter[Txt2ImgRequest | Img2ImgRequest | RawGraphRequest] = TypeAdapter(JobRequest)


def parse_request(body: Any) -> Txt2ImgRequest | Img2ImgRequest | RawGraphRequest:
    """Validate a job request body (dict or JSON text). Raises pydantic.ValidationError."""
    if isinstance(body, str | bytes):
        return JOB_REQUEST.validate_json(body)
    return JOB_REQUEST.validate_python(body)


# --- the job resource -------------------------------------------------------------------------------------------


class Progress(BaseModel):
    value: float = Field(default=0.0, ge=0.0, le=1.0)
    node: str | None = None
    node_type: str | None = None
    step: int | None = None
    max: int | None = None
    phase: str = "queued"


class Artifact(BaseModel):
    index: int
    key: str = Field(description="Storage path, relative to the storage root.")
    content_type: str
    size: int
    sha256: str
    kind: str = Field(default="images", description="ComfyUI output kind: images, gifs, videos, audio, ...")
    node_id: str | None = None
    url: str | None = None


class JobResult(BaseModel):
    artifacts: list[Artifact] = Field(default_factory=list)
    seed: int | None = None
    backend: str | None = None
    prompt_id: str | None = None
    metadata_key: str | None = None
    adopted: bool = Field(default=False, description="True when a previous attempt's finished prompt was reused.")


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None
    transient: bool = False


class Durations(BaseModel):
    queue_wait: float | None = None
    render: float | None = None
    store: float | None = None
    total: float | None = None


class Job(BaseModel):
    """A job as stored in Redis and served by the API."""

    job_id: str
    status: JobState
    attempt: int = 1
    max_attempts: int = 3
    priority: Priority = Priority.NORMAL
    owner: str = "local"
    request: dict[str, Any]
    labels: list[str] = Field(default_factory=list)
    progress: Progress = Field(default_factory=Progress)
    result: JobResult | None = None
    error: ErrorInfo | None = None
    backend: str | None = None
    worker: str | None = None
    cancel_requested: bool = False
    flow_run_id: str | None = None
    batch_id: str | None = Field(default=None, description="The batch this job is an item of.")
    created_at: datetime
    started_at: datetime | None = None
    render_started_at: datetime | None = None
    render_finished_at: datetime | None = None
    finished_at: datetime | None = None
    durations: Durations = Field(default_factory=Durations)

    @model_validator(mode="after")
    def _durations(self) -> Job:
        def span(a: datetime | None, b: datetime | None) -> float | None:
            if a is None or b is None:
                return None
            s = (b - a).total_seconds()
            return round(s, 4) if math.isfinite(s) else None

        self.durations = Durations(
            queue_wait=span(self.created_at, self.render_started_at),
            render=span(self.render_started_at, self.render_finished_at),
            store=span(self.render_finished_at, self.finished_at if self.status == JobState.SUCCEEDED else None),
            total=span(self.created_at, self.finished_at),
        )
        return self


EventType = Literal["status", "progress", "artifact", "done", "log"]


class JobEvent(BaseModel):
    id: str = Field(description="Redis stream id; send it back as Last-Event-ID to resume.")
    type: EventType
    data: dict[str, Any]


class Role(StrEnum):
    FREE = "free"
    PRO = "pro"
    INTERNAL = "internal"


class Principal(BaseModel):
    """Who is calling: the owner of the jobs they create, and their role."""

    id: str = Field(description="Owner id: jobs, batches and uploads are scoped to it.")
    role: Role
    key_id: str | None = None
    name: str | None = None
