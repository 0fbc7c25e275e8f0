"""A Prefect server for the batch and pipeline run-plane tests (as tests/flows does), on the Redis server only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.conftest import api_factory, http  # noqa: F401 (shared fixtures)
from tests.core.conftest import fake, runtime_factory  # noqa: F401 (shared fixtures)


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from comfyflow.testing.prefect_server import prefect_server

    with prefect_server() as url, temporary_settings({PREFECT_API_URL: url}):
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    from tests.conftest import SERVER_REDIS

    return SERVER_REDIS
