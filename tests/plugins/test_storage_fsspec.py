"""The fsspec storage plugin: the storage contract on memory, a local folder and moto's S3, plus what only
this plugin promises (S3 outages, public endpoints for presigned URLs, temporary files, config errors)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from comfyflow_fsspec import FsspecStorage
from comfyflow_fsspec.s3 import UPLOAD_PART_BYTES

from comfyflow.errors import ConfigError, StorageError, ValidationError
from comfyflow.testing.moto_server import MotoS3Server
from comfyflow.testing.storage_contract import ExpiringSignedUrlContract, StorageContract, http_get

# The caller retries storage errors with backoff; in tests a dead endpoint must fail at once.
FAIL_FAST = {"config_kwargs": {"retries": {"total_max_attempts": 1}, "connect_timeout": 1, "read_timeout": 5}}


def s3_storage(moto_s3: MotoS3Server, prefix: str = "artifacts", **kwargs: object) -> FsspecStorage:
    endpoint = moto_s3.endpoint
    options = endpoint.storage_options(**FAIL_FAST)
    return FsspecStorage(f"s3://{endpoint.bucket}/{prefix}", options=options, **kwargs)  # type: ignore[arg-type]


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    async def storage(self) -> AsyncIterator[FsspecStorage]:
        async with FsspecStorage(f"memory://cf-{uuid.uuid4().hex[:8]}") as storage:
            yield storage


class TestLocalStorage(StorageContract):
    @pytest.fixture
    async def storage(self, tmp_path: Path) -> AsyncIterator[FsspecStorage]:
        async with FsspecStorage(f"file://{tmp_path}/artifacts") as storage:
            yield storage


class TestS3Storage(StorageContract, ExpiringSignedUrlContract):
    @pytest.fixture
    async def storage(self, moto_s3: MotoS3Server) -> AsyncIterator[FsspecStorage]:
        async with s3_storage(moto_s3) as storage:
            yield storage


# --- what only this plugin promises -------------------------------------------------------------------------


def test_entry_point_names_fsspec_storage() -> None:
    (entry,) = entry_points(group="comfyflow.storage", name="fsspec")
    assert entry.load() is FsspecStorage


@pytest.mark.parametrize("url", ["nosuchproto://x", "s3://"])
def test_unusable_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="Storage URL"):
        FsspecStorage(url, options={"anon": True} if url.startswith("s3") else None)


async def test_closed_storage_refuses_calls() -> None:
    storage = FsspecStorage("memory://cf-closed")
    await storage.aclose()
    await storage.aclose()  # a second close is harmless
    with pytest.raises(StorageError, match="closed"):
        await storage.put("a.png", b"x", content_type="image/png")


@pytest.mark.parametrize("expires_in", [0, -5, 8 * 24 * 3600, 1.5])
async def test_signed_url_lifetime_is_checked(expires_in: object) -> None:
    async with FsspecStorage("memory://cf-lifetime") as storage:
        with pytest.raises(ValidationError, match="lifetime"):
            await storage.signed_url("a.png", expires_in=expires_in)  # type: ignore[arg-type]


async def test_local_put_leaves_no_temporary_file_on_disk(tmp_path: Path) -> None:
    async with FsspecStorage(f"file://{tmp_path}") as storage:
        for _ in range(3):
            await storage.put("jobs/j1/0.png", b"png" * 1000, content_type="image/png")
    assert _files_under(tmp_path) == ["jobs/j1/0.png"]


async def test_local_write_failure_names_the_key_and_cleans_up(tmp_path: Path) -> None:
    async with FsspecStorage(f"file://{tmp_path}") as storage:
        await storage.put("jobs/j1", b"a file where a folder should be", content_type="text/plain")
        with pytest.raises(StorageError, match=r"put of key 'jobs/j1/0.png'") as caught:
            await storage.put("jobs/j1/0.png", b"x", content_type="image/png")
        assert caught.value.details["key"] == "jobs/j1/0.png"
        await storage.put("jobs/j2/0.png", b"x", content_type="image/png")
        with pytest.raises(StorageError, match=r"put of key 'jobs/j2'"):  # a folder is there
            await storage.put("jobs/j2", b"x", content_type="image/png")
    assert sorted(os.listdir(tmp_path / "jobs")) == ["j1", "j2"]
    assert os.listdir(tmp_path / "jobs" / "j2") == ["0.png"]


async def test_s3_info_returns_the_digest_and_type_recorded_at_put(moto_s3: MotoS3Server) -> None:
    data = b"\x89PNG" + os.urandom(5000)
    async with s3_storage(moto_s3) as storage:
        await storage.put("jobs/digest/0.png", data, content_type="image/png")
        info = await storage.info("jobs/digest/0.png")
    assert info is not None
    assert (info.sha256, info.content_type, info.size) == (
        hashlib.sha256(data).hexdigest(),
        "image/png",
        len(data),
    )


async def test_s3_outage_is_a_fast_storage_error_then_recovers(moto_s3: MotoS3Server) -> None:
    async with s3_storage(moto_s3) as storage:
        await storage.put("jobs/outage/before.png", b"before", content_type="image/png")
        moto_s3.stop()
        try:
            started = time.monotonic()
            with pytest.raises(StorageError, match=r"put of key 'jobs/outage/0.png'") as caught:
                await storage.put("jobs/outage/0.png", b"x", content_type="image/png")
            assert time.monotonic() - started < 3
            assert caught.value.transient
            with pytest.raises(StorageError):
                await storage.get("jobs/outage/before.png")  # down is not "not found"
        finally:
            moto_s3.start()
        stored = await storage.put("jobs/outage/0.png", b"after", content_type="image/png")
        assert stored.size == 5
        assert await storage.get("jobs/outage/before.png") == b"before"


async def test_presigned_url_names_the_public_endpoint(moto_s3: MotoS3Server) -> None:
    public = f"http://localhost:{moto_s3.port}"
    async with s3_storage(moto_s3, public_endpoint=public) as storage:
        await storage.put("jobs/public/0.png", b"public bytes", content_type="image/png")
        url = await storage.signed_url("jobs/public/0.png", expires_in=300)
    assert url is not None
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("localhost", moto_s3.port)
    assert "127.0.0.1" not in url
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["300"]
    assert await asyncio.to_thread(http_get, url) == (200, b"public bytes")


async def test_presigned_url_without_public_endpoint_uses_the_storage_endpoint(moto_s3: MotoS3Server) -> None:
    async with s3_storage(moto_s3) as storage:
        url = await storage.signed_url("jobs/x/0.png", expires_in=60)
    assert url is not None
    assert url.startswith(f"{moto_s3.endpoint.endpoint_url}/{moto_s3.bucket}/artifacts/jobs/x/0.png?")


async def test_one_storage_serves_several_event_loops(moto_s3: MotoS3Server) -> None:
    async with s3_storage(moto_s3) as storage:
        await storage.put("jobs/loops/0.png", b"shared", content_type="image/png")
        # A Prefect task or a second server thread runs its own loop; the same storage object must work there.
        assert await asyncio.to_thread(asyncio.run, storage.get("jobs/loops/0.png")) == b"shared"


async def _until(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"not {what} within {timeout:g}s"
        await asyncio.sleep(0.05)


async def test_local_put_file_cancelled_mid_copy_renames_nothing(tmp_path: Path) -> None:
    source = tmp_path / "staged.bin"
    source.write_bytes(os.urandom(1 << 20))
    async with FsspecStorage(f"file://{tmp_path}/store") as storage:
        fs = storage._fs
        assert fs is not None
        copy, copied, release = fs.put_file, threading.Event(), threading.Event()

        def slow_copy(src: str, dst: str, **kwargs: object) -> None:  # the copy is done, the rename not yet
            copy(src, dst, **kwargs)
            copied.set()
            release.wait(10)

        fs.put_file = slow_copy  # type: ignore[method-assign]
        task = asyncio.create_task(storage.put_file("jobs/j/0.bin", source, content_type="video/webm"))
        assert await asyncio.to_thread(copied.wait, 10)
        assert any(".cf-tmp-" in name for name in _files_under(tmp_path / "store")), "no temporary copy yet"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

        async def gone() -> bool:
            return _files_under(tmp_path / "store") == []

        await _until(gone, "removed by the abandoned copy")
        assert await storage.list("jobs") == []
    assert source.exists(), "the staged file is the caller's to remove"


async def test_s3_put_file_cancelled_mid_upload_leaves_no_object_and_no_parts(
    moto_s3: MotoS3Server, tmp_path: Path
) -> None:
    """s3fs aborts a multipart upload that fails, not one that is cancelled: the storage aborts it."""
    import boto3

    source = tmp_path / "staged.bin"
    source.write_bytes(os.urandom(5 * UPLOAD_PART_BYTES))  # five parts
    endpoint = moto_s3.endpoint
    client = boto3.client(
        "s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.key,
        aws_secret_access_key=endpoint.secret, region_name=endpoint.region,
    )  # fmt: skip
    prefix = f"cancel-{uuid.uuid4().hex[:8]}"
    key = f"{prefix}/jobs/j/0.bin"

    async def uploads() -> list[str]:
        listed = await asyncio.to_thread(client.list_multipart_uploads, Bucket=endpoint.bucket, Prefix=key)
        return [u["Key"] for u in listed.get("Uploads", [])]

    async def started() -> bool:
        return await uploads() == [key]

    async def aborted() -> bool:
        return await uploads() == []

    try:
        async with s3_storage(moto_s3, prefix) as storage:
            moto_s3.delay = 0.2  # each request (each part) takes a while
            task = asyncio.create_task(storage.put_file("jobs/j/0.bin", source, content_type="video/webm"))
            await _until(started, "a multipart upload under way")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _until(aborted, "the multipart upload aborted")
            moto_s3.delay = 0.0
            assert await storage.info("jobs/j/0.bin") is None
            stored = await storage.put_file("jobs/j/0.bin", source, content_type="video/webm")  # then it works
            assert stored.size == 5 * UPLOAD_PART_BYTES
    finally:
        moto_s3.delay = 0.0
        client.close()
