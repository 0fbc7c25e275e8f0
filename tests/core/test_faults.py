"""Faults: a worker killed with SIGKILL mid-render, and a ComfyUI that refuses, 500s, hangs or drops sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from comfyflow.models import JobState, Txt2ImgRequest
from tests.conftest import stored_files
from tests.core.conftest import running_worker, wait_done


def _worker_process(settings, home: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "COMFYFLOW_HOME": str(home),
        "COMFYFLOW_REDIS_URL": settings.redis_url.get_secret_value(),
        "COMFYFLOW_KEY_PREFIX": settings.key_prefix,
        "COMFYFLOW_BACKENDS": ",".join(settings.backends),
        "COMFYFLOW_PREFECT_ENABLED": "false",
        "COMFYFLOW_LEASE_SECONDS": str(settings.lease_seconds),
        "COMFYFLOW_STORAGE_URL": settings.resolved_storage_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "comfyflow.cli", "worker", "--concurrency", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(home / "worker.log", "ab"),
    )  # fmt: skip


@pytest.mark.parametrize("finish_before_reclaim", [True, False], ids=["adopt-finished", "attach-running"])
async def test_sigkill_mid_render_succeeds_exactly_once(
    fake, runtime_factory, redis_url, tmp_path, finish_before_reclaim
) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 1.5
    rt = await runtime_factory(backends=[fake.url], redis_url=redis_url, lease_seconds=1.0)
    (tmp_path / "w").mkdir()
    proc = _worker_process(rt.settings, tmp_path / "w")
    try:
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=5))).job
        for _ in range(300):
            if fake.prompts_posted:
                break
            await asyncio.sleep(0.02)
        assert fake.prompts_posted, f"the worker never posted: {(tmp_path / 'w' / 'worker.log').read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if finish_before_reclaim:
            await asyncio.sleep(fake.render_time + 0.5)  # the prompt finishes on ComfyUI while nobody watches
        async with running_worker(rt):
            done = await wait_done(rt, job.job_id, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.attempt == 2
    assert list(fake.prompts_posted.values()) == [1], "the reclaimed job must adopt, not render again"
    assert done.result is not None and done.result.adopted is finish_before_reclaim
    files = stored_files(Path(rt.settings.resolved_storage_url[7:]) / "jobs" / job.job_id)
    assert files == ["0.png", "metadata.json"], "exactly one set of artifacts"
    assert await rt.slots.in_use(fake.url) == 0


@pytest.mark.parametrize(
    "fault",
    ["refuse", "http_500", "hang", "drop_socket"],
)
async def test_backend_faults_are_retried_then_succeed(fake, runtime_factory, fault) -> None:  # type: ignore[no-untyped-def]
    # No prober runs here, so a backend marked down by passive failures never comes back up: do not wait for
    # one (tests/core/test_backend_wait.py covers waiting); every try spends an attempt.
    rt = await runtime_factory(backends=[fake.url], stall_timeout_seconds=1.0, max_attempts=3, backend_wait_seconds=0)
    setattr(fake.faults, fault, True)
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
        if fault != "drop_socket":
            for _ in range(400):  # wait until the first attempt has failed, then heal the backend
                cur = await rt.store.get(job.job_id)
                if cur is not None and cur.attempt >= 2:
                    break
                await asyncio.sleep(0.02)
            setattr(fake.faults, fault, False)
        done = await wait_done(rt, job.job_id, timeout=30)
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.attempt == (1 if fault == "drop_socket" else 2)
    assert await rt.slots.in_use(fake.url) == 0


@pytest.mark.parametrize("fault", ["refuse", "http_500", "hang"])
async def test_backend_faults_that_persist_fail_classified_within_bound(fake, runtime_factory, fault) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], stall_timeout_seconds=0.5, max_attempts=2, backend_wait_seconds=0)
    setattr(fake.faults, fault, True)
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
        done = await wait_done(rt, job.job_id, timeout=30)
    assert done.status == JobState.FAILED and done.attempt == 2
    assert done.error is not None
    assert done.error.code == ("STALLED" if fault == "hang" else "BACKEND_UNAVAILABLE")
    assert "gave up after 2 attempts" in done.error.message
    assert await rt.slots.in_use(fake.url) == 0
    if fault == "hang":
        assert fake.interrupts, "a stalled prompt is interrupted before it is retried"


async def test_out_of_memory_frees_then_retries_once(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], max_attempts=5)
    fake.faults.oom = True
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
        done = await wait_done(rt, job.job_id, timeout=30)
    assert done.status == JobState.FAILED
    assert done.attempt == 2, "out of memory is retried once, not up to max_attempts"
    assert done.error is not None and "out of memory" in done.error.message.lower()
    frees = [e for e in fake.log if e["path"].endswith("/free")]
    assert len(frees) >= 1
