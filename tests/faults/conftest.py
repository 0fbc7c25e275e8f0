"""Fault tests: a Redis server of their own (killed and restarted), the fake ComfyUI, the API on a real port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyflow.api.app import create_app
from comfyflow.testing.api_server import serve_app
from comfyflow.testing.fake_comfyui import FakeComfyUI
from comfyflow.testing.redis_process import RedisProcess


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI(workdir=tmp_path / "fake") as server:
        yield server


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[Any]:
    """``make(persistent=...)`` starts a Redis server that the test owns (and may kill); stopped at the end."""
    started: list[RedisProcess] = []

    def make(*, persistent: bool) -> RedisProcess:
        proc = RedisProcess(tmp_path / f"redis{len(started)}", persistent=persistent)
        started.append(proc)
        proc.start()
        return proc

    yield make
    for proc in started:
        proc.kill()


@pytest.fixture
async def api_on(make_settings: Any, fake: FakeComfyUI) -> AsyncIterator[Any]:
    """``await api_on(redis_url, run_worker=..., **settings)`` -> the base URL of an API on a loopback port."""
    stack = contextlib.AsyncExitStack()

    async def start(redis_url: str, *, run_worker: bool = True, **overrides: Any) -> str:
        overrides.setdefault("backends", [fake.url])
        settings = make_settings(redis_url=redis_url, auth="none", **overrides)
        return await stack.enter_async_context(serve_app(create_app(settings, run_worker=run_worker)))

    yield start
    await stack.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
