"""Outputs stream from ComfyUI to storage (issue 12 item 5): a worker holds about one chunk of an output in
memory, never the whole file; the size cap holds mid-stream; staged files go on success, failure and cancel.

The renders run on the fake ComfyUI over real sockets through the real ComfyUIBackend. A thin wrapper adds one
more output to a render's result: a large file in the fake's output folder (as a video node leaves one), which
the worker downloads through the fake's ``/view``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from comfyflow_fsspec.s3 import UPLOAD_PART_BYTES

from comfyflow.core import staging
from comfyflow.core.runtime import Runtime
from comfyflow.errors import OutputTooLarge
from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.plugins.comfyui.backend import ComfyUIBackend
from comfyflow.plugins.comfyui.client import CHUNK
from comfyflow.plugins.protocols import OutputRef, OutputStream
from comfyflow.testing.extra_output import ExtraOutput
from comfyflow.testing.fake_comfyui import FakeComfyUI
from comfyflow.testing.moto_server import S3Endpoint, moto_s3_process
from tests.conftest import close_runtime
from tests.core.conftest import running_worker, wait_done

MIB = 1024 * 1024


class IgnoresCap(ExtraOutput):
    """A backend that does not enforce ``max_bytes`` itself (a third-party one, say); counts the bytes read."""

    bytes_read = 0

    @contextlib.asynccontextmanager
    async def open_output(self, ref: OutputRef, *, max_bytes: int) -> AsyncIterator[OutputStream]:
        async with self.inner.open_output(ref, max_bytes=1 << 62) as stream:
            yield replace(stream, chunks=self._counted(stream.chunks))

    async def _counted(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.bytes_read += len(chunk)
            yield chunk


class PausesMidStream(ExtraOutput):
    """Hands out the first chunk of the extra output, then waits (a ComfyUI that stops sending)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.paused = asyncio.Event()

    @contextlib.asynccontextmanager
    async def open_output(self, ref: OutputRef, *, max_bytes: int) -> AsyncIterator[OutputStream]:
        async with self.inner.open_output(ref, max_bytes=max_bytes) as stream:
            yield replace(stream, chunks=self._pause(stream.chunks)) if ref == self.ref else stream

    async def _pause(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield chunk
            self.paused.set()
            await asyncio.Event().wait()  # until cancelled


def big_output(fake: FakeComfyUI, size: int) -> tuple[OutputRef, str]:
    """A ``size``-byte video file in the fake's output folder; its ref and sha256."""
    path = Path(fake.dirs.output) / "big_00001_.webm"
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            out.write(block)
    return OutputRef("9", "gifs", path.name), digest.hexdigest()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def staged_files(rt: Runtime) -> list[str]:
    return sorted(str(p.relative_to(rt.staging)) for p in rt.staging.rglob("*") if p.is_file())


@pytest.fixture
async def open_runtime(server_redis_url: str, make_settings: Any) -> AsyncIterator[Any]:
    """Opens a runtime whose backend for ``fake`` is ``backend`` (a wrapper of the real ComfyUIBackend)."""
    opened: list[Runtime] = []

    async def make(fake: FakeComfyUI, wrapper: type[ExtraOutput], **overrides: Any) -> tuple[Runtime, Any]:
        settings = make_settings(backends=[fake.url], **overrides)
        backend = wrapper(ComfyUIBackend(fake.url, settings=settings))
        rt = await Runtime.open(settings, server_redis_url, backends={fake.url: backend})
        opened.append(rt)
        return rt, backend

    yield make
    for rt in opened:
        await close_runtime(rt)


@contextlib.contextmanager
def traced() -> Iterator[list[int]]:
    """tracemalloc on for the block; the list gets its peak of traced (Python) allocations."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
        peak.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


@pytest.fixture(params=["local", "s3"])
def storage_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Local files, or moto's S3 in a child process (so its buffers are not counted here)."""
    if request.param == "local":
        yield {}
        return
    with moto_s3_process("streaming") as endpoint:
        yield {"storage_url": f"s3://{endpoint.bucket}/artifacts", "storage_options": _s3_options(endpoint)}


def _s3_options(endpoint: S3Endpoint) -> dict[str, Any]:
    return endpoint.storage_options(config_kwargs={"retries": {"total_max_attempts": 1}})


async def test_a_large_output_goes_to_storage_in_bounded_memory(fake, open_runtime, storage_settings) -> None:  # type: ignore[no-untyped-def]
    """48 MiB output: the worker's fetch-check-store path holds a few 1 MiB chunks (aiohttp's read buffer, the
    batch being written; measured ~4 MiB), on S3 also two copies of one 8 MiB part (s3fs's read, aiohttp's body
    payload; ~17 MiB) - never the output. The old path held it twice (downloaded buffer and copy): ~96 MiB."""
    size = 48 * MIB
    ref, digest = big_output(fake, size)
    rt, backend = await open_runtime(fake, ExtraOutput, max_output_bytes=size, **storage_settings)
    bound = 2 * UPLOAD_PART_BYTES + 6 * MIB if storage_settings else 6 * CHUNK
    async with running_worker(rt):
        peaks = []
        # A warm-up job pays the one-off costs (clients, service models), then the same job without the large
        # output is the baseline.
        for extra, measured in ((None, False), (None, True), (ref, True)):
            backend.ref = extra
            with traced() if measured else contextlib.nullcontext([0]) as peak:
                job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
                done = await wait_done(rt, job.job_id, timeout=60)
            assert done.status == JobState.SUCCEEDED, done.error
            if measured:
                peaks.append(peak[0])
    assert done.result is not None
    (big,) = [a for a in done.result.artifacts if a.kind == "gifs"]
    assert (big.size, big.sha256, big.content_type) == (size, digest, "video/webm")
    assert big.key == f"jobs/{job.job_id}/{done.attempt}/1.webm"
    info = await rt.storage.info(big.key)
    assert info is not None and info.size == size
    extra_peak = peaks[1] - peaks[0]
    assert extra_peak < bound, f"{extra_peak / MIB:.1f} MiB more at peak for a {size // MIB} MiB output"
    assert staged_files(rt) == [], "staged files are removed after success"


async def test_an_output_over_the_cap_fails_mid_stream_and_leaves_nothing(fake, open_runtime) -> None:  # type: ignore[no-untyped-def]
    """The backend does not enforce the cap (and the file's length is not checked up front): the worker stops
    reading once more than the cap has arrived; the job fails with OUTPUT_TOO_LARGE, not retried."""
    cap = 5 * MIB + 1
    ref, _ = big_output(fake, 12 * MIB)
    rt, backend = await open_runtime(fake, IgnoresCap, max_output_bytes=cap, max_attempts=3)
    backend.ref = ref
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.FAILED and done.attempt == 1, done
    assert done.error is not None and done.error.code == OutputTooLarge.code, done.error
    assert "COMFYFLOW_MAX_OUTPUT_BYTES" in done.error.message
    assert cap < backend.bytes_read <= cap + CHUNK, "read on past the cap (12 MiB were there)"
    assert await rt.storage.list(f"jobs/{job.job_id}") == [], "no partial artifact"
    assert staged_files(rt) == [], "the partial staged file is removed"


async def test_a_job_canceled_mid_fetch_leaves_no_staged_file_and_no_artifact(fake, open_runtime) -> None:  # type: ignore[no-untyped-def]
    ref, _ = big_output(fake, 8 * MIB)
    rt, backend = await open_runtime(fake, PausesMidStream)
    backend.ref = ref
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
        await asyncio.wait_for(backend.paused.wait(), timeout=30)
        assert any(name.endswith("1.webm") for name in staged_files(rt)), "no partial staged file to remove"
        assert await rt.store.cancel(job.job_id) == "requested"
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.CANCELED, done
    assert staged_files(rt) == []
    assert await rt.storage.list(f"jobs/{job.job_id}") == []


async def _chunks(blocks: list[bytes], pause: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for block in blocks:
        yield block
    if pause is not None:
        pause.set()
        await asyncio.Event().wait()


async def test_write_stream_hashes_and_counts_what_it_writes(tmp_path: Path) -> None:
    blocks = [os.urandom(100_000) for _ in range(30)]  # gathered into ~1 MiB writes
    written = await staging.write_stream(_chunks(blocks), tmp_path / "0.bin", max_bytes=3_000_000, name="o")
    data = b"".join(blocks)
    assert (written.size, written.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "0.bin").read_bytes() == data


async def test_write_stream_removes_its_file_when_over_the_cap_or_cancelled(tmp_path: Path) -> None:
    with pytest.raises(OutputTooLarge):
        await staging.write_stream(_chunks([b"x" * 600_000] * 4), tmp_path / "0.bin", max_bytes=2_000_000, name="o")
    assert names(tmp_path) == []
    pause = asyncio.Event()
    task = asyncio.create_task(
        staging.write_stream(_chunks([b"y" * MIB] * 3, pause), tmp_path / "1.bin", max_bytes=10 * MIB, name="o")
    )
    await asyncio.wait_for(pause.wait(), timeout=10)
    assert (tmp_path / "1.bin").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names(tmp_path) == []
