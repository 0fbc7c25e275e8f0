"""Issue 5 end to end: jobs on S3 (moto server) with presigned links, storage outages during the store step,
and retention with an injected clock."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from comfyflow.core.retention import RetentionSweeper
from comfyflow.core.runtime import Runtime
from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.testing.moto_server import MotoS3Server, moto_s3_server
from tests.conftest import SERVER_REDIS, close_runtime
from tests.core.conftest import running_worker, wait_done


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3Server]:
    with moto_s3_server() as server:
        yield server


@pytest.fixture
async def s3_runtime(s3: MotoS3Server, make_settings: Any, fake: Any, prefix: str) -> Any:
    opened: list[Runtime] = []

    async def make(**overrides: Any) -> Runtime:
        ep = s3.endpoint
        options = ep.storage_options(config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1,
                                                    "read_timeout": 2})  # fmt: skip
        settings = make_settings(
            backends=[fake.url], storage_url=f"s3://{ep.bucket}/{prefix}", storage_options=options,
            storage_public_endpoint=ep.endpoint_url, **overrides,
        )  # fmt: skip
        rt = await Runtime.open(settings, SERVER_REDIS)
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        await close_runtime(rt)


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:  # plain HTTP, no credentials
        return bytes(resp.read())


async def test_s3_presigned_links_download_the_stored_bytes(s3_runtime: Any) -> None:
    rt = await s3_runtime()
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2, batch_size=2))).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.result is not None
    meta = json.loads(
        await asyncio.to_thread(_download, await rt.storage.signed_url(done.result.metadata_key, expires_in=60))
    )
    for art, recorded in zip(done.result.artifacts, meta["artifacts"], strict=True):
        url = await rt.storage.signed_url(art.key, expires_in=60)
        assert url is not None and url.startswith(rt.settings.storage_public_endpoint)
        data = await asyncio.to_thread(_download, url)
        assert hashlib.sha256(data).hexdigest() == recorded["sha256"] == art.sha256
    short = await rt.storage.signed_url(done.result.artifacts[0].key, expires_in=1)
    await asyncio.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(_download, short)
    assert info.value.code == 403


async def test_s3_down_during_store_waits_then_succeeds(s3: MotoS3Server, s3_runtime: Any) -> None:
    rt = await s3_runtime(store_timeout_seconds=20)
    s3.stop()
    try:
        async with running_worker(rt):
            job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2))).job
            for _ in range(200):  # rendered, now retrying the store step
                cur = await rt.store.get(job.job_id)
                if cur is not None and cur.progress.phase == "storing":
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            cur = await rt.store.get(job.job_id)
            assert cur is not None and cur.status == JobState.RUNNING, "must not succeed while S3 is down"
            s3.start()
            done = await wait_done(rt, job.job_id, timeout=30)
    finally:
        if not s3.running:
            s3.start()
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.result is not None
    keys = await rt.storage.list(f"jobs/{job.job_id}")
    assert keys == sorted([a.key for a in done.result.artifacts] + [done.result.metadata_key])


async def test_s3_down_longer_than_bound_fails_and_leaves_nothing(s3: MotoS3Server, s3_runtime: Any) -> None:
    rt = await s3_runtime(store_timeout_seconds=1, max_attempts=2)
    s3.stop()
    try:
        async with running_worker(rt):
            job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", steps=2, batch_size=3))).job
            done = await wait_done(rt, job.job_id, timeout=40)
    finally:
        s3.start()
    assert done.status == JobState.FAILED
    assert done.error is not None and done.error.code == "STORAGE_ERROR"
    assert "gave up after 2 attempts" in done.error.message
    await RetentionSweeper(rt).run_once()
    assert await rt.storage.list(f"jobs/{job.job_id}") == []


async def test_retention_expires_old_artifacts_only(runtime_factory: Any, fake: Any, server_redis_url: str) -> None:
    now = [2_000_000_000.0]
    rt = await runtime_factory(backends=[fake.url], retention_days=1)
    rt.store.clock = lambda: now[0]
    async with running_worker(rt):
        old = (await rt.store.submit(Txt2ImgRequest(prompt="old", steps=1))).job
        assert (await wait_done(rt, old.job_id)).status == JobState.SUCCEEDED
        now[0] += 0.5 * 86400
        fresh = (await rt.store.submit(Txt2ImgRequest(prompt="fresh", steps=1))).job
        assert (await wait_done(rt, fresh.job_id)).status == JobState.SUCCEEDED
    now[0] += 0.6 * 86400  # old is 1.1 days old, fresh 0.6
    sweeper = RetentionSweeper(rt)
    assert await sweeper.run_once() == 1
    assert await sweeper.run_once() == 0, "a second sweeper pass (or worker) finds nothing more"
    expired = await rt.store.get(old.job_id)
    assert expired is not None and expired.status == JobState.EXPIRED
    assert await rt.storage.list(f"jobs/{old.job_id}") == []
    kept = await rt.store.get(fresh.job_id)
    assert kept is not None and kept.status == JobState.SUCCEEDED
    assert len(await rt.storage.list(f"jobs/{fresh.job_id}")) == 2
