"""One Prefect server (PostgreSQL-backed, pre-migrated template) for the whole session."""

from __future__ import annotations

import pytest

from tests.core.conftest import fake, runtime_factory  # noqa: F401 (shared fixtures)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Prefect tests run on the Redis server only (the core tests cover both Redis variants)."""
    from tests.conftest import SERVER_REDIS

    return SERVER_REDIS
