"""What anyone may spend of the service (``COMFYFLOW_THROTTLE__...``, ``COMFYFLOW_STREAMS__...``), nested in
:class:`comfyflow.settings.Settings`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ThrottleSettings(BaseModel):
    """Limits per client address, applied before authentication, counted in Redis (so they hold across API
    processes) over fixed one-minute windows. 0 turns a limit off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    auth_failures_per_minute: int = Field(
        default=20, ge=0, description="Refused credentials per client address per minute; above: 429 + Retry-After."
    )
    anonymous_per_minute: int = Field(
        default=300, ge=0, description="Requests without credentials (health probes included) per address per minute."
    )
    proxies_count: int = Field(
        default=0, ge=0, le=10,
        description="Reverse proxies in front of the API that append to X-Forwarded-For (0 = use the peer address).",
    )  # fmt: skip
    ipv6_prefix: int = Field(
        default=64, ge=32, le=128, description="IPv6 clients are counted per network of this prefix length."
    )


class StreamSettings(BaseModel):
    """Bounds of progress streams (SSE and WebSocket). A closed stream resumes with Last-Event-ID."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_per_owner: int = Field(default=8, ge=1, le=10_000, description="Open streams per owner (all API processes).")
    idle_seconds: float = Field(default=300.0, gt=0, description="A stream with no job event this long is closed.")
    max_lifetime_seconds: float = Field(default=3600.0, gt=0, description="Any stream is closed after this long.")
