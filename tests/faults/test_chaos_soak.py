"""The chaos soak: a few hundred jobs through two worker processes and two fake ComfyUI backends while a seeded
script SIGKILLs workers, restarts Redis (AOF), kills and restarts a backend and takes S3 (moto) away. Then the
invariants: every job that got 202 ended succeeded exactly once (one artifact set whose bytes match its metadata,
the prompt of its result posted once, no prompt posted twice) or failed with a classified error; no slot lease,
no staged file and no orphan object left.

Replay a failure with the seed it printed: ``COMFYFLOW_SOAK_SEED=<seed> pytest tests/faults/test_chaos_soak.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyflow.core import staging
from comfyflow.core.retention import RetentionSweeper
from comfyflow.core.runtime import Runtime
from comfyflow.models import Job, JobState
from comfyflow.testing.fake_comfyui import FakeComfyUI
from comfyflow.testing.moto_server import MotoS3Server
from tests.scale.conftest import Processes, wait_all, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

JOBS = int(os.environ.get("COMFYFLOW_SOAK_JOBS", "240"))
SETTINGS = {
    "lease_seconds": 2.0,
    "slot_lease_seconds": 4.0,
    "heartbeat_seconds": 0.5,
    "backend_probe_seconds": 0.5,
    "backend_down_after": 2,
    "backend_up_after": 2,
    "backend_wait_seconds": 60.0,
    "retry_backoff_seconds": 0.1,
    "retry_backoff_max_seconds": 1.0,
    "max_attempts": 10,
    "stall_timeout_seconds": 5.0,
    "render_timeout_seconds": 60.0,
    "store_timeout_seconds": 30.0,
    "retention_sweep_seconds": 2.0,
}
#: Errors a job may end with: classified by the engine, never INTERNAL_ERROR.
CLASSIFIED = {"BACKEND_UNAVAILABLE", "STORAGE_ERROR", "WORKER_LOST", "STALLED", "WORKER_SHUTDOWN"}


class Chaos:
    """The system under test and the faults the seeded script applies to it."""

    def __init__(self, rng: random.Random, workdir: Path, processes: Processes, env: dict[str, str],
                 redis: Any, s3: MotoS3Server, fakes: list[FakeComfyUI]) -> None:  # fmt: skip
        self.rng, self.workdir, self.processes, self.env = rng, workdir, processes, env
        self.redis, self.s3, self.fakes = redis, s3, fakes
        self.every_fake: list[FakeComfyUI] = list(fakes)  # restarted ones too: their POST /prompt counts add up
        self.log: list[str] = []

    def start_worker(self, name: str) -> None:
        self.processes.start(name, ["worker", "--concurrency", "4"], self.env)

    async def kill_worker(self) -> None:
        name = self.rng.choice(["worker0", "worker1"])
        self.processes.kill(name)
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        self.start_worker(name)
        self.log.append(f"SIGKILL {name}, restarted")

    async def restart_redis(self) -> None:
        self.redis.kill()
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        await asyncio.to_thread(self.redis.start)
        self.log.append("Redis SIGKILLed, restarted with its AOF")

    async def restart_backend(self) -> None:
        i = self.rng.randrange(len(self.fakes))
        old = self.fakes[i]
        await old.stop()  # its queue and history are gone, like a killed ComfyUI
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        workdir = self.workdir / f"fake{i}-{uuid.uuid4().hex[:6]}"
        new = FakeComfyUI(port=old.port, render_time=old.render_time, workdir=workdir)
        await new.start()
        self.fakes[i] = new
        self.every_fake.append(new)
        self.log.append(f"backend {i} killed, restarted")

    async def s3_away(self) -> None:
        await asyncio.to_thread(self.s3.stop)
        await asyncio.sleep(self.rng.uniform(2.0, 5.0))
        await asyncio.to_thread(self.s3.start)
        self.log.append("S3 away, back")

    async def run(self) -> None:
        faults = [self.kill_worker, self.kill_worker, self.kill_worker, self.restart_redis, self.restart_backend,
                  self.s3_away]  # fmt: skip
        self.rng.shuffle(faults)
        for fault in faults:
            await asyncio.sleep(self.rng.uniform(1.5, 4.0))
            await fault()


async def _submit_all(http: aiohttp.ClientSession, base: str, rng: random.Random, seen: Counter[int]) -> list[str]:
    """Submit JOBS jobs, paced; a 503 (Redis restarting) or a cut connection is retried with the same
    Idempotency-Key. Only a 202 counts as accepted."""
    accepted: list[str] = []
    for i in range(JOBS):
        body = {"prompt": f"fox {i}", "width": 64, "height": 64, "steps": 2, "seed": i}
        headers = {"Idempotency-Key": f"soak-{i}"}
        for _ in range(400):
            try:
                async with http.post(f"{base}/api/v1/jobs", json=body, headers=headers) as r:
                    seen[r.status] += 1
                    if r.status in (200, 202):
                        accepted.append((await r.json())["job_id"])
                        break
                    assert r.status == 503 and r.headers.get("Retry-After"), (r.status, await r.text())
            except (aiohttp.ClientConnectionError, TimeoutError):
                seen[0] += 1
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"job {i} was never accepted")
        await asyncio.sleep(rng.uniform(0.0, 0.08))
    return accepted


async def test_chaos_soak(redis_process, api_on, fake, make_settings, tmp_path, prefix) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("COMFYFLOW_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos soak seed: {seed} (replay: COMFYFLOW_SOAK_SEED={seed})")
    rng = random.Random(seed)
    redis = redis_process(persistent=True)
    s3 = MotoS3Server(bucket="soak")
    s3.start()
    second = FakeComfyUI(workdir=tmp_path / "fake-second")
    await second.start()
    fake.render_time = second.render_time = 0.05
    processes = Processes(tmp_path)
    ep = s3.endpoint
    options = ep.storage_options(config_kwargs={"connect_timeout": 2, "read_timeout": 5})
    settings = make_settings(
        redis_url=redis.url, backends=[fake.url, second.url], storage_url=f"s3://{ep.bucket}/{prefix}",
        storage_options=options, **SETTINGS,
    )  # fmt: skip
    env = worker_env(
        settings, COMFYFLOW_STORAGE_OPTIONS=json.dumps(options), COMFYFLOW_LOG_LEVEL="INFO",
        **{f"COMFYFLOW_{k.upper()}": str(v) for k, v in SETTINGS.items()},
    )  # fmt: skip
    chaos = Chaos(rng, tmp_path, processes, env, redis, s3, [fake, second])
    rt: Runtime | None = None
    try:
        for name in ("worker0", "worker1"):
            chaos.start_worker(name)
        base = await api_on(redis.url, run_worker=False, backends=settings.backends,
                            storage_url=settings.storage_url, storage_options=options, **SETTINGS)  # fmt: skip
        seen: Counter[int] = Counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            submitting = asyncio.create_task(_submit_all(http, base, rng, seen))
            await chaos.run()
            accepted = await submitting
        assert 500 not in seen, f"the API answered 500 (seed {seed}): {seen}"
        assert len(set(accepted)) == JOBS

        rt = await Runtime.open(settings, redis.url)
        jobs = await wait_all(rt, accepted, timeout=240, procs=processes)
        processes.stop_all()  # SIGTERM: graceful
        await _check(rt, jobs, chaos, settings, seed)
    except BaseException:
        print(f"seed {seed}; faults: {chaos.log}\n{processes.logs()}")
        raise
    finally:
        processes.stop_all()
        if rt is not None:
            await rt.aclose()
        for f in chaos.every_fake:
            if f is not fake:
                await f.stop()
        s3.stop()


async def _check(rt: Runtime, jobs: list[Job], chaos: Chaos, settings: Any, seed: int) -> None:
    where = f"(seed {seed}, faults {chaos.log})"
    posted: Counter[str] = Counter()
    for f in chaos.every_fake:
        posted.update(f.prompts_posted)
    assert all(n == 1 for n in posted.values()), f"a prompt was posted twice {where}"
    expected: set[str] = set()
    succeeded = 0
    for job in jobs:
        if job.status == JobState.FAILED:
            assert job.error is not None and job.error.code in CLASSIFIED, f"{job.job_id}: {job.error} {where}"
            continue
        assert job.status == JobState.SUCCEEDED, f"{job.job_id} ended {job.status} {where}"
        succeeded += 1
        result = job.result
        assert result is not None and result.metadata_key and result.prompt_id
        assert posted[result.prompt_id] == 1, f"{job.job_id}: its prompt was never posted {where}"
        meta = json.loads(await rt.storage.get(result.metadata_key))
        assert [a["sha256"] for a in meta["artifacts"]] == [a.sha256 for a in result.artifacts]
        for art in result.artifacts:
            data = await rt.storage.get(art.key)
            assert hashlib.sha256(data).hexdigest() == art.sha256 and len(data) == art.size, f"{art.key} {where}"
        expected |= {a.key for a in result.artifacts} | {result.metadata_key}
    assert succeeded >= len(jobs) * 0.9, f"only {succeeded} of {len(jobs)} succeeded {where}"
    retried = sum(1 for j in jobs if j.attempt > 1)
    print(f"soak: {succeeded}/{len(jobs)} succeeded, {retried} needed more than one attempt, "
          f"{sum(posted.values())} prompts posted; faults: {chaos.log}")  # fmt: skip

    # What killed processes left: the sweepers remove it (retention for failed jobs' objects, staging folders).
    sweeper = RetentionSweeper(rt)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        await sweeper.run_once()
        await staging.sweep(settings.resolved_home / "staging", rt.redis, rt.store.keys, min_age=0)
        stored = set(await rt.storage.list("jobs"))
        in_use = [await rt.slots.in_use(u) for u in settings.backends]
        left = [str(p) for p in (settings.resolved_home / "staging").rglob("*") if p.is_file()]
        if stored == expected and not any(in_use) and not left:
            break
        assert loop.time() < deadline, (
            f"orphans {sorted(stored - expected)[:5]}, missing {sorted(expected - stored)[:5]}, slots {in_use}, "
            f"staged {left[:5]} {where}"
        )
        await asyncio.sleep(0.5)
