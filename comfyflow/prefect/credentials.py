"""The block that holds how to reach a comfyflow API: its URL and an API key (a secret field)."""

from __future__ import annotations

from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from comfyflow.client import AsyncClient


class ComfyflowCredentials(CredentialsBlock):
    """Where a comfyflow API is and the key to call it with. Save it once, load it in any flow::

        from comfyflow.prefect import ComfyflowCredentials

        ComfyflowCredentials(url="https://comfyflow.example.com", api_key="cf_live_...").save("comfyflow")
        credentials = await ComfyflowCredentials.load("comfyflow")
        async with credentials.get_client() as client:
            job = await client.get(job_id)

    Register the block type with ``prefect block register -m comfyflow.prefect`` to create it from the UI.
    """

    _block_type_name = "Comfyflow Credentials"
    _block_type_slug = "comfyflow-credentials"
    _description = "The URL of a comfyflow API and an API key to call it with."

    url: str = Field(
        default="http://127.0.0.1:8000",
        title="API URL",
        description="Base URL of the comfyflow API, e.g. https://comfyflow.example.com.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        title="API key",
        description="A comfyflow API key (cf_live_...); leave empty for a server running without auth.",
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds one API request may take.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"url {value!r} is not an http(s) URL; expected e.g. https://comfyflow.example.com")
        return value.rstrip("/")

    def get_client(self, *args: Any, **kwargs: Any) -> AsyncClient:
        """A new asyncio client of the API (close it: ``async with credentials.get_client() as client``)."""
        key = self.api_key.get_secret_value() if self.api_key else None
        return AsyncClient(self.url, *args, api_key=key, timeout=kwargs.pop("timeout", self.timeout), **kwargs)
