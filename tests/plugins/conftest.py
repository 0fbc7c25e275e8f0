"""Fixtures for plugin tests: moto's S3 on a loopback port, shared by the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfyflow.testing.moto_server import MotoS3Server, moto_s3_server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3Server]:
    """A running fake S3 with one bucket. Tests that stop it must start it again (see ``s3_outage``)."""
    with moto_s3_server() as server:
        yield server
