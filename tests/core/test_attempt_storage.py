"""Objects and staged files of attempts that did not commit: a stale attempt storing late can never overwrite
what the job's result points to; what uncommitted attempts stored or staged is removed."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from comfyflow.core.attempt import AttemptContext
from comfyflow.core.queue import QueueReader
from comfyflow.core.reaper import Reaper
from comfyflow.core.retention import RetentionSweeper
from comfyflow.core.runtime import Runtime
from comfyflow.core.steps import Prepared, Rendered, Staged
from comfyflow.core.store import Claim
from comfyflow.core.storing import store_outputs
from comfyflow.core.worker import Worker
from comfyflow.errors import LeaseLost, StorageError
from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.plugins.protocols import StoredObject
from tests.core.conftest import running_worker, wait_done


async def _claim_silently(rt: Runtime, job_id: str) -> AttemptContext:
    """Claim the job's attempt as a worker that will go silent (killed, or cut off), without running it."""
    reader = QueueReader(rt.redis, rt.store.keys, "silent-worker", rt.settings.priority_weights)
    for _ in range(100):
        msg = await reader.next(block_ms=100)
        if msg is not None:
            break
    assert msg is not None and msg.job_id == job_id
    claim = await rt.store.claim(msg, "silent-worker")
    assert claim is not None
    job = await rt.store.get(job_id)
    assert job is not None
    return AttemptContext(rt, claim, job, await rt.store.raw(job_id))


def _staged(folder: Path, data: bytes) -> Rendered:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "0.png"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    return Rendered("http://backend", "prompt", False, [Staged(0, str(path), "image/png", "png", len(data), digest,
                                                               "images", "9")])  # fmt: skip


async def test_stale_attempt_storing_late_cannot_overwrite_the_result(fake, runtime_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
    stale = await _claim_silently(rt, job.job_id)
    await Reaper(rt.store).run_once(min_idle_ms=0)  # its lease lapsed: attempt 2
    async with running_worker(rt):
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED and done.attempt == 2 and done.result is not None

    # attempt 1 wakes up and stores its own (different) bytes
    prepared = Prepared(graph={}, seed=1, model=None, candidates=[], reference="")
    with pytest.raises(LeaseLost):
        await store_outputs(stale, prepared, _staged(tmp_path / "stale", b"\x89PNG stale bytes of attempt 1"))
    for art in done.result.artifacts:
        data = await rt.storage.get(art.key)
        assert hashlib.sha256(data).hexdigest() == art.sha256 and len(data) == art.size, "overwritten"
    assert done.result.metadata_key is not None
    meta = json.loads(await rt.storage.get(done.result.metadata_key))
    assert meta["attempt"] == 2 and [a["sha256"] for a in meta["artifacts"]] == [a.sha256 for a in
                                                                                  done.result.artifacts]  # fmt: skip


async def test_objects_of_an_attempt_killed_before_its_commit_are_removed(fake, runtime_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
    killed = await _claim_silently(rt, job.job_id)
    prepared = Prepared(graph={}, seed=1, model=None, candidates=[], reference="")
    await store_outputs(killed, prepared, _staged(tmp_path / "killed", b"\x89PNG attempt 1, never committed"))
    await Reaper(rt.store).run_once(min_idle_ms=0)  # killed after its put, before the commit (F2)
    async with running_worker(rt):
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED and done.attempt == 2 and done.result is not None
    keys = await rt.storage.list(f"jobs/{job.job_id}")
    assert keys == sorted([a.key for a in done.result.artifacts] + [done.result.metadata_key])


class _BrokenPuts:
    """The runtime's storage, except that every write fails (an outage that outlasts the attempt's bound)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        raise StorageError(f"put of {key}: storage unavailable (test)", details={"key": key})

    async def put_file(self, key: str, path: Any, *, content_type: str, sha256: str | None = None) -> StoredObject:
        raise StorageError(f"put of {key}: storage unavailable (test)", details={"key": key})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def test_staged_files_of_failed_attempts_are_removed(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], store_timeout_seconds=0.3, max_attempts=2)
    rt.storage = _BrokenPuts(rt.storage)  # type: ignore[assignment]
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.FAILED and done.error is not None and done.error.code == "STORAGE_ERROR"
    assert sum(fake.prompts_posted.values()) >= 1  # outputs were fetched into staging, then storing failed
    assert _files(rt.staging) == [], "staged files of failed attempts stay on disk"


async def test_sweep_removes_staged_files_a_killed_process_left(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    queued = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job  # attempt 1, not running
    old = time.time() - 3600
    for name in (f"{queued.job_id}/1", "0123456789abcdef0123456789abcdef/2"):  # a queued job, a forgotten one
        folder = rt.staging / name
        folder.mkdir(parents=True)
        (folder / "0.png").write_bytes(b"left by a killed worker")
        os.utime(folder, (old, old))
    fresh = rt.staging / "fedcba9876543210fedcba9876543210" / "1"  # just made: maybe an attempt starting now
    fresh.mkdir(parents=True)
    (fresh / "0.png").write_bytes(b"in use")
    await RetentionSweeper(rt).run_once()
    assert _files(rt.staging) == ["fedcba9876543210fedcba9876543210/1/0.png"]


async def test_an_attempt_never_removes_objects_the_result_names(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    """A commit script retried after a lost reply answers "not ours" to its own first run: the attempt then
    believes it did not commit, and must still leave the job's result alone."""
    rt = await runtime_factory(backends=[fake.url])
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED and done.result is not None
    claim = Claim(job.job_id, done.attempt, "w", "stream", "0-1")
    ctx = AttemptContext(rt, claim, done, await rt.store.raw(job.job_id))
    await Worker(rt)._tidy(ctx, committed=False)
    keys = await rt.storage.list(f"jobs/{job.job_id}")
    assert keys == sorted([a.key for a in done.result.artifacts] + [done.result.metadata_key])
