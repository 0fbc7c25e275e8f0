"""A Prefect server for the batch and pipeline run-plane tests (as tests/flows does), on the Redis server only."""

from __future__ import annotations

import pytest

from tests.api.conftest import api_factory, http  # noqa: F401 (shared fixtures)
from tests.core.conftest import fake, runtime_factory  # noqa: F401 (shared fixtures)


@pytest.fixture(scope="session")
def redis_url() -> str:
    from tests.conftest import SERVER_REDIS

    return SERVER_REDIS
