"""A live API server on a loopback port, with embedded workers and the fake ComfyUI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyflow.api.app import create_app
from comfyflow.testing.api_server import serve_app
from comfyflow.testing.fake_comfyui import FakeComfyUI


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI(workdir=tmp_path / "fake") as server:
        yield server


@pytest.fixture
async def api_factory(make_settings: Any, server_redis_url: str, fake: FakeComfyUI) -> AsyncIterator[Any]:
    """Start an API (+ workers) with settings overrides; returns its base URL."""
    import contextlib

    stack = contextlib.AsyncExitStack()

    async def start(*, run_worker: bool = True, policy: Any = None, **overrides: Any) -> str:
        overrides.setdefault("backends", [fake.url])
        overrides.setdefault("redis_url", server_redis_url)
        overrides.setdefault("auth", "none")  # tests of auth turn it on (tests/auth)
        settings = make_settings(**overrides)
        app = create_app(settings, run_worker=run_worker, policy=policy)
        return await stack.enter_async_context(serve_app(app))

    yield start
    await stack.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
