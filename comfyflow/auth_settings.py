"""Settings of auth and tenancy: per-role limits, the raw-graph node allow-list, the JWT scheme.

Nested inside :class:`comfyflow.settings.Settings` (``COMFYFLOW_LIMITS__FREE__DAILY_JOBS=20``,
``COMFYFLOW_JWT__SECRET=...``). A limit of ``none`` (or ``unlimited``) lifts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

RoleName = Literal["free", "pro", "internal"]

#: ComfyUI core nodes a raw graph may use unless COMFYFLOW_GRAPH_NODE_ALLOWLIST says otherwise: model loading,
#: conditioning, sampling, latent and image operations, input from ComfyUI's input folder, output to its output
#: folder. Nothing that runs code, reaches the network or writes outside ComfyUI's folders.
DEFAULT_GRAPH_NODES: tuple[str, ...] = (
    "CheckpointLoaderSimple", "CLIPLoader", "DualCLIPLoader", "UNETLoader", "VAELoader", "LoraLoader",
    "LoraLoaderModelOnly", "ControlNetLoader", "UpscaleModelLoader", "CLIPTextEncode", "CLIPSetLastLayer",
    "ConditioningCombine", "ConditioningConcat", "ConditioningAverage", "ConditioningSetArea", "ControlNetApply",
    "ControlNetApplyAdvanced", "FluxGuidance", "EmptyLatentImage", "EmptySD3LatentImage", "LatentUpscale",
    "LatentUpscaleBy", "LatentFromBatch", "RepeatLatentBatch", "SetLatentNoiseMask", "KSampler",
    "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "KSamplerSelect", "BasicScheduler",
    "BasicGuider", "CFGGuider", "RandomNoise", "ModelSamplingDiscrete", "VAEDecode", "VAEEncode", "VAEDecodeTiled",
    "VAEEncodeTiled", "VAEEncodeForInpaint", "ImageScale", "ImageScaleBy", "ImageInvert", "ImageBatch",
    "ImageUpscaleWithModel", "EmptyImage", "GetImageSize", "LoadImage", "LoadImageMask", "SaveImage",
    "PreviewImage", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline",
    "PrimitiveBoolean",
)  # fmt: skip

#: One megapixel is 1024 x 1024 pixels here, as in the request models (4 MP = 2048 x 2048).
MEGAPIXEL = 1024 * 1024
UNLIMITED = {"none", "null", "unlimited", ""}


class RoleLimits(BaseModel):
    """What callers of one role may do. ``None`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    daily_jobs: int | None = Field(ge=0, description="Jobs per UTC day (batch items count one each); 402 above.")
    concurrent_jobs: int | None = Field(ge=1, description="Jobs running at once; more wait queued.")
    requests_per_minute: int | None = Field(ge=1, description="Authenticated requests per sliding minute; 429 above.")
    max_batch_items: int | None = Field(
        ge=1,
        description="Items (jobs) in one batch, sweep combinations included; none = up to COMFYFLOW_MAX_BATCH_ITEMS.",
    )
    max_images_per_job: int = Field(ge=1, description="Images one job makes: batch_size of one txt2img/img2img job.")
    max_megapixels: float = Field(gt=0, description="width x height of one image, in 1024x1024 megapixels.")
    url_ttl_seconds: int = Field(ge=10, description="Lifetime of artifact links handed to this role.")
    retention_days: int = Field(ge=1, description="How long this role's artifacts are kept.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # `batch_size` was this limit's old name, easily confused with a job's own batch_size (images per job).
        if isinstance(data, dict) and "batch_size" in data:
            if "max_batch_items" in data:
                raise ValueError("batch_size is the old name of max_batch_items; set only max_batch_items")
            data = {**data, "max_batch_items": data["batch_size"]}
            del data["batch_size"]
        return data

    @field_validator("daily_jobs", "concurrent_jobs", "requests_per_minute", "max_batch_items", mode="before")
    @classmethod
    def _unlimited(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in UNLIMITED:
            return None
        return value

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * MEGAPIXEL)


class FreeLimits(RoleLimits):
    daily_jobs: int | None = 10
    concurrent_jobs: int | None = 1
    requests_per_minute: int | None = 5
    max_batch_items: int | None = 10  # its whole day's quota in one sweep
    max_images_per_job: int = 1
    max_megapixels: float = 1.0
    url_ttl_seconds: int = 3600
    retention_days: int = 7


class ProLimits(RoleLimits):
    daily_jobs: int | None = 100
    concurrent_jobs: int | None = 3
    requests_per_minute: int | None = 20
    max_batch_items: int | None = 100
    max_images_per_job: int = 4
    max_megapixels: float = 2.25
    url_ttl_seconds: int = 86400
    retention_days: int = 30


class InternalLimits(RoleLimits):
    daily_jobs: int | None = None
    concurrent_jobs: int | None = 10
    requests_per_minute: int | None = None
    max_batch_items: int | None = None  # up to COMFYFLOW_MAX_BATCH_ITEMS
    max_images_per_job: int = 10
    max_megapixels: float = 4.0
    url_ttl_seconds: int = 7 * 86400
    retention_days: int = 90


class Limits(BaseModel):
    """Limits of each role (the seed's quotas by default; batch items sized for sweeps, not the seed's ten-request
    batch endpoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    free: FreeLimits = Field(default_factory=FreeLimits)
    pro: ProLimits = Field(default_factory=ProLimits)
    internal: InternalLimits = Field(default_factory=InternalLimits)

    def for_role(self, role: str) -> RoleLimits:
        return getattr(self, str(role))  # type: ignore[no-any-return]


DEFAULT_ROLE_CLAIMS: dict[str, RoleName] = {"free": "free", "pro": "pro", "internal": "internal"}


class JwtSettings(BaseModel):
    """The JWT bearer scheme: an HS256 shared secret or a JWKS file, and a claim that names the role."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr | None = Field(default=None, description="Shared secret for HS256 (at least 32 bytes).")
    jwks_file: Path | None = Field(default=None, description="JSON Web Key Set file with the public keys.")
    algorithms: list[str] = Field(
        default_factory=list,
        description="Accepted algorithms; empty = HS256 with a secret, RS256/ES256/PS256/EdDSA with a JWKS file.",
    )
    issuer: str | None = Field(default=None, description="Required `iss`, when set.")
    audience: str | None = Field(default=None, description="Required `aud`, when set.")
    role_claim: str = Field(default="role", description="Claim holding the role (a string or a list of strings).")
    roles: dict[str, RoleName] = Field(
        default_factory=lambda: dict(DEFAULT_ROLE_CLAIMS),
        description="Claim value -> role. With a list claim the highest mapped role wins.",
    )
    default_role: RoleName | None = Field(default=None, description="Role of tokens with no mapped role; unset = 401.")
    leeway_seconds: int = Field(default=30, ge=0, le=600, description="Clock skew allowed on exp/nbf/iat.")

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("the JWT secret must be at least 32 bytes; generate one with `openssl rand -hex 32`")
        return value
