"""Embedded services: a real Redis, a PostgreSQL and a Prefect server, started once per comfyflow home.

With no ``COMFYFLOW_REDIS_URL`` / ``COMFYFLOW_PREFECT_API_URL``, :func:`ensure_services` starts (or finds) the
home's embedded servers; every comfyflow process using the same home shares them, and they keep running until
:func:`stop_services`. When the URLs are set, the configured servers are used and nothing is started.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from comfyflow.embedded.postgres import ensure_postgres, stop_postgres
from comfyflow.embedded.prefect import ensure_prefect, stop_prefect
from comfyflow.embedded.redis import ensure_redis, stop_redis
from comfyflow.embedded.supervisor import EmbeddedServiceError
from comfyflow.settings import Settings

__all__ = [
    "EmbeddedServiceError",
    "ServiceURLs",
    "ensure_postgres",
    "ensure_prefect",
    "ensure_redis",
    "ensure_services",
    "stop_services",
]


@dataclass(frozen=True)
class ServiceURLs:
    """Where comfyflow's servers answer.

    Attributes:
        redis_url: ``redis://`` URL, with the embedded server's password when embedded.
        prefect_api_url: the Prefect API URL, or None when ``COMFYFLOW_PREFECT_ENABLED`` is false.
    """

    redis_url: str
    prefect_api_url: str | None


async def ensure_services(settings: Settings) -> ServiceURLs:
    """Return the service URLs, starting the embedded servers that are needed and not running yet.

    Idempotent and fast when the servers run already (a few milliseconds); a cold start takes ~0.1 s for Redis
    and a few seconds for Prefect (its first start on a new home also runs the database migrations).

    Raises:
        EmbeddedServiceError: when an embedded server cannot start (the message names the cause and the fix).
    """
    home = settings.resolved_home
    home.mkdir(parents=True, exist_ok=True)

    async def redis_url() -> str:
        if settings.redis_url is not None:
            return settings.redis_url.get_secret_value()
        return await asyncio.to_thread(ensure_redis, home)

    async def prefect_url() -> str | None:
        if not settings.prefect_enabled:
            return None
        if settings.prefect_api_url:
            return settings.prefect_api_url.rstrip("/")
        return await asyncio.to_thread(ensure_prefect, home, settings.prefect_port)

    redis, prefect = await asyncio.gather(redis_url(), prefect_url())
    return ServiceURLs(redis_url=redis, prefect_api_url=prefect)


def stop_services(home: Path) -> None:
    """Stop every embedded server of ``home`` that runs: Prefect first, then PostgreSQL, then Redis.

    Servers configured by URL are never touched. Other comfyflow processes using the same home lose their
    servers too: call this from an explicit "stop" command, not from a process's shutdown.

    Raises:
        EmbeddedServiceError: the first failure, after trying to stop every server.
    """
    home = Path(home).expanduser().resolve()
    errors = []
    for stop in (stop_prefect, stop_postgres, stop_redis):
        try:
            stop(home)
        except EmbeddedServiceError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
