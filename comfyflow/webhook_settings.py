"""Webhook settings (``COMFYFLOW_WEBHOOKS__...``), nested in :class:`comfyflow.settings.Settings`."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class WebhookSettings(BaseModel):
    """How job notifications are signed and delivered."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="Run the delivery loop in worker processes.")
    secret: SecretStr | None = Field(
        default=None,
        description="Standard Webhooks signing secret (whsec_<base64>); unset = generated once under the home folder.",
    )
    allow_networks: list[str] = Field(
        default_factory=list,
        description='CIDRs allowed although private, loopback or link-local (JSON list, e.g. ["10.0.0.0/8"]).',
    )
    max_attempts: int = Field(default=8, ge=1, le=50, description="Tries per delivery before it counts as failed.")
    backoff_seconds: float = Field(default=5.0, ge=0, description="First retry delay; doubles per try.")
    backoff_max_seconds: float = Field(default=3600.0, ge=0)
    timeout_seconds: float = Field(default=10.0, gt=0, description="Per-request timeout of a delivery.")
    poll_seconds: float = Field(default=0.25, gt=0, description="How often the delivery loop looks for due work.")
    concurrency: int = Field(default=16, ge=1, le=512, description="Deliveries in flight per process.")

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allow_networks")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a network; expected CIDR notation like 127.0.0.0/8") from None
        return value
