"""Artifact downloads are streamed in chunks (whole object never read at once, Range still works) and bounded:
at most COMFYFLOW_MAX_CONCURRENT_DOWNLOADS at once per process, 503 + Retry-After above."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from comfyflow_fsspec.storage import FsspecStorage

from comfyflow.api import downloads
from tests.api.helpers import error_of, submit, wait_for

CHUNK = 64


class Reads(list[tuple[int, int]]):
    """Every ranged read the API makes; after ``arm()`` a whole-object read fails the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.monkeypatch = monkeypatch

    def arm(self) -> None:
        async def whole(storage: Any, key: str) -> bytes:
            raise AssertionError(f"{key} was read whole")

        self.monkeypatch.setattr(FsspecStorage, "get", whole)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads(monkeypatch)
    original = FsspecStorage.read_range

    async def read_range(self: Any, key: str, start: int, end: int) -> bytes:
        seen.append((start, end))
        return await original(self, key, start, end)

    monkeypatch.setattr(FsspecStorage, "read_range", read_range)
    monkeypatch.setattr(downloads, "CHUNK_BYTES", CHUNK)
    return seen


async def test_downloads_are_streamed_in_chunks_with_ranges(api_factory, http, reads) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    job = await wait_for(http, base, (await submit(http, base))["job_id"])
    art = job["result"]["artifacts"][0]
    reads.arm()  # from here on, a whole-object read fails
    reads.clear()
    async with http.get(art["url"]) as r:
        data = await r.read()
        assert r.status == 200 and r.headers["Content-Length"] == str(art["size"])
    assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["size"] > 4 * CHUNK
    assert len(reads) == -(-art["size"] // CHUNK) and all(end - start <= CHUNK for start, end in reads)
    async with http.get(art["url"], headers={"Range": "bytes=100-250"}) as r:
        assert r.status == 206 and r.headers["Content-Range"] == f"bytes 100-250/{art['size']}"
        assert await r.read() == data[100:251]
    async with http.get(art["url"], headers={"Range": f"bytes={art['size']}-"}) as r:
        assert r.status == 416
    async with http.head(art["url"]) as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(art["size"])


async def test_concurrent_downloads_are_bounded(api_factory, http, monkeypatch, reads) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(max_concurrent_downloads=1)
    job = await wait_for(http, base, (await submit(http, base))["job_id"])
    url = job["result"]["artifacts"][0]["url"]
    gate, holding = asyncio.Event(), asyncio.Event()
    original = FsspecStorage.read_range

    async def slow(self: Any, key: str, start: int, end: int) -> bytes:
        holding.set()  # the first download is inside: it holds the only place
        await asyncio.wait_for(gate.wait(), timeout=60)  # until the test lets it go
        return await original(self, key, start, end)

    monkeypatch.setattr(FsspecStorage, "read_range", slow)
    monkeypatch.setattr(downloads, "QUEUE_SECONDS", 0.2)
    first = asyncio.create_task(http.get(url))
    await asyncio.wait_for(holding.wait(), timeout=30)
    async with http.get(url) as r:
        await error_of(r, 503, "BACKEND_UNAVAILABLE")
        assert int(r.headers["Retry-After"]) >= 1
    gate.set()
    async with await asyncio.wait_for(first, timeout=30) as r:
        assert r.status == 200 and len(await r.read()) == job["result"]["artifacts"][0]["size"]
    async with http.get(url) as r:
        assert r.status == 200, "the place is free again"
