"""Fixtures for end-to-end core tests: a fake ComfyUI on a real port, a runtime, a worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from comfyflow.core.runtime import Runtime
from comfyflow.core.worker import Worker
from comfyflow.models import Job
from comfyflow.testing.fake_comfyui import FakeComfyUI
from tests.conftest import close_runtime


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI(workdir=tmp_path / "fake") as server:
        yield server


@pytest.fixture
async def runtime_factory(redis_url: str, make_settings: Any) -> AsyncIterator[Any]:
    opened: list[Runtime] = []

    async def make(**overrides: Any) -> Runtime:
        rt = await Runtime.open(make_settings(**overrides), redis_url)
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        await close_runtime(rt)


@contextlib.asynccontextmanager
async def running_worker(rt: Runtime, **kwargs: Any) -> AsyncIterator[Worker]:
    stop = asyncio.Event()
    worker = Worker(rt, **kwargs)
    task = asyncio.create_task(worker.run(stop, grace=2))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


async def wait_done(rt: Runtime, job_id: str, timeout: float = 30) -> Job:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        job = await rt.store.get(job_id)
        if job is not None and job.status.terminal:
            return job
        await asyncio.sleep(0.05)
    job = await rt.store.get(job_id)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {job}")
