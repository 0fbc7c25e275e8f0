"""The storage contract: what every ``comfyflow.storage`` plugin must do, as tests any implementation reuses.

Subclass :class:`StorageContract` in a test module as ``Test<Something>`` and give it one fixture,
``storage``, that yields an open :class:`~comfyflow.plugins.protocols.Storage` and closes it afterwards (the
pattern of fsspec's ``tests/abstract``)::

    class TestMyStorage(StorageContract):
        @pytest.fixture
        async def storage(self):
            storage = MyStorage("...")
            yield storage
            await storage.aclose()

Every test writes under its own random folder, so one storage (one bucket) may serve the whole session; local
files for ``put_file`` go to pytest's ``tmp_path``.
Class attributes say what the backend can do:

- Storages that hand out direct URLs also subclass ``ExpiringSignedUrlContract`` (refused once expired).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from comfyflow.errors import NotFound, StorageError, ValidationError
from comfyflow.plugins.protocols import Storage, StoredObject

BAD_KEYS = ["", "/abs/0.png", "../up.png", "a/../../b.png", "a/./b.png", "./a.png", "a//b.png", "a/",
            "a\\b.png", "a/\x00.png", "..", "."]  # fmt: skip
BAD_PREFIXES = ["/abs", "../up", "a//b", "a\\b", "a/../b"]


def http_get(url: str) -> tuple[int, bytes]:
    """GET over plain HTTP: (status, body); 4xx/5xx are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.asyncio
class StorageContract:
    """Tests every Storage passes. Subclasses provide the ``storage`` fixture."""

    @pytest.fixture
    def ns(self) -> str:
        """A folder no other test uses."""
        return f"contract-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def local_file(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        """Writes bytes to a new local file and returns its path (what ``put_file`` uploads)."""

        def write(data: bytes) -> Path:
            path = tmp_path / f"local-{uuid.uuid4().hex[:8]}.bin"
            path.write_bytes(data)
            return path

        return write

    async def test_is_a_storage(self, storage: Storage) -> None:
        assert isinstance(storage, Storage)
        assert isinstance(storage.url, str)

    async def test_put_then_get_round_trips(self, storage: Storage, ns: str) -> None:
        data = bytes(range(256)) * 41
        await storage.put(f"{ns}/a/0.png", data, content_type="image/png")
        assert await storage.get(f"{ns}/a/0.png") == data

    async def test_put_reports_size_sha256_and_type(self, storage: Storage, ns: str) -> None:
        data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 1000
        stored = await storage.put(f"{ns}/0.png", data, content_type="image/png")
        assert stored == StoredObject(f"{ns}/0.png", len(data), hashlib.sha256(data).hexdigest(), "image/png")

    async def test_empty_object(self, storage: Storage, ns: str) -> None:
        stored = await storage.put(f"{ns}/empty.bin", b"", content_type="application/octet-stream")
        assert (stored.size, stored.sha256) == (0, hashlib.sha256(b"").hexdigest())
        assert await storage.get(f"{ns}/empty.bin") == b""

    async def test_info_describes_a_stored_object(self, storage: Storage, ns: str) -> None:
        assert await storage.info(f"{ns}/0.png") is None
        data = b"x" * 1234
        await storage.put(f"{ns}/0.png", data, content_type="image/png")
        info = await storage.info(f"{ns}/0.png")
        assert info is not None
        assert (info.key, info.size) == (f"{ns}/0.png", 1234)
        assert info.sha256 in ("", hashlib.sha256(data).hexdigest())  # "" when the backend keeps no digest
        assert info.content_type

    async def test_overwrite_replaces_the_whole_object(self, storage: Storage, ns: str) -> None:
        key = f"{ns}/0.png"
        await storage.put(key, b"long" * 1000, content_type="image/png")
        stored = await storage.put(key, b"short", content_type="image/png")
        assert stored.size == 5
        assert await storage.get(key) == b"short"
        assert (await storage.info(key)).size == 5  # type: ignore[union-attr]
        assert await storage.list(ns) == [key]

    async def test_missing_objects_are_not_found(self, storage: Storage, ns: str) -> None:
        await storage.put(f"{ns}/folder/0.png", b"x", content_type="image/png")
        for key in (f"{ns}/missing.png", f"{ns}/folder"):  # nothing there; a folder is not an object
            with pytest.raises(NotFound):
                await storage.get(key)
            with pytest.raises(NotFound):
                await storage.read_range(key, 0, 1)
            assert await storage.info(key) is None

    @pytest.mark.parametrize("bad", BAD_KEYS)
    async def test_bad_keys_are_rejected(self, storage: Storage, bad: str) -> None:
        with pytest.raises(ValidationError):
            await storage.put(bad, b"x", content_type="image/png")
        with pytest.raises(ValidationError):
            await storage.get(bad)
        with pytest.raises(ValidationError):
            await storage.read_range(bad, 0, 1)
        with pytest.raises(ValidationError):
            await storage.info(bad)
        with pytest.raises(ValidationError):
            await storage.signed_url(bad, expires_in=60)

    @pytest.mark.parametrize("bad", BAD_PREFIXES)
    async def test_bad_prefixes_are_rejected(self, storage: Storage, bad: str) -> None:
        with pytest.raises(ValidationError):
            await storage.list(bad)
        with pytest.raises(ValidationError):
            await storage.delete_prefix(bad)

    async def test_delete_prefix_refuses_the_whole_store(self, storage: Storage) -> None:
        with pytest.raises(ValidationError):
            await storage.delete_prefix("")

    async def test_read_range(self, storage: Storage, ns: str) -> None:
        key = f"{ns}/digits.txt"
        await storage.put(key, b"0123456789", content_type="text/plain")
        cases = {
            (0, 4): b"0123",
            (2, 5): b"234",
            (5, 5): b"",
            (8, 100): b"89",
            (10, 20): b"",
            (0, 10): b"0123456789",
        }
        for (start, end), expected in cases.items():
            assert await storage.read_range(key, start, end) == expected, (start, end)
        for start, end in ((5, 2), (-1, 3)):
            with pytest.raises(ValidationError):
                await storage.read_range(key, start, end)

    async def test_list_is_sorted_and_scoped_to_a_folder(self, storage: Storage, ns: str) -> None:
        keys = [f"{ns}/b/2.png", f"{ns}/a/1.png", f"{ns}/a/0.png", f"{ns}/ab/0.png", f"{ns}/c.txt"]
        for key in random.sample(keys, len(keys)):
            await storage.put(key, key.encode(), content_type="application/octet-stream")
        assert await storage.list(ns) == sorted(keys)
        assert await storage.list(f"{ns}/a") == [f"{ns}/a/0.png", f"{ns}/a/1.png"]  # not ab/...
        assert await storage.list(f"{ns}/a/") == [f"{ns}/a/0.png", f"{ns}/a/1.png"]
        assert await storage.list(f"{ns}/nothing-here") == []

    async def test_delete_prefix_counts_and_is_idempotent(self, storage: Storage, ns: str) -> None:
        for key in (f"{ns}/a/0.png", f"{ns}/a/sub/1.png", f"{ns}/ab/0.png"):
            await storage.put(key, b"x", content_type="image/png")
        assert await storage.delete_prefix(f"{ns}/a") == 2
        assert await storage.delete_prefix(f"{ns}/a") == 0
        assert await storage.delete_prefix(f"{ns}/never-existed") == 0
        assert await storage.list(ns) == [f"{ns}/ab/0.png"]
        with pytest.raises(NotFound):
            await storage.get(f"{ns}/a/0.png")

    async def test_puts_leave_no_temporary_objects(self, storage: Storage, ns: str) -> None:
        keys = [f"{ns}/{i}.png" for i in range(5)]
        for key in keys + keys:  # the second round overwrites
            await storage.put(key, b"data" * 100, content_type="image/png")
        assert await storage.list(ns) == keys

    async def test_readers_never_see_a_partial_object(self, storage: Storage, ns: str) -> None:
        async def put(key: str, i: int) -> None:
            await storage.put(key, VERSIONS[i], content_type="application/octet-stream")

        await _readers_see_whole_versions(storage, ns, put)

    async def test_concurrent_puts_leave_one_whole_object(self, storage: Storage, ns: str) -> None:
        key = f"{ns}/race.bin"
        payloads = [bytes([i]) * (100_000 + i) for i in range(8)]
        await asyncio.gather(*(storage.put(key, p, content_type="application/octet-stream") for p in payloads))
        assert await storage.get(key) in payloads
        assert await storage.list(ns) == [key]

    async def test_put_file_round_trips_and_reports_size_sha256_and_type(
        self, storage: Storage, ns: str, local_file
    ) -> None:  # type: ignore[no-untyped-def]
        data = os.urandom(300_000)
        path = local_file(data)
        stored = await storage.put_file(f"{ns}/0.webm", path, content_type="video/webm")
        digest = hashlib.sha256(data).hexdigest()
        assert stored == StoredObject(f"{ns}/0.webm", len(data), digest, "video/webm")
        assert await storage.get(f"{ns}/0.webm") == data
        info = await storage.info(f"{ns}/0.webm")
        assert info is not None and info.size == len(data) and info.sha256 in ("", digest)
        assert path.read_bytes() == data, "the local file is left as it was"

    async def test_put_file_records_the_digest_the_caller_computed(self, storage: Storage, ns: str, local_file) -> None:  # type: ignore[no-untyped-def]
        data = b"\x89PNG\r\n\x1a\n" + b"\x01" * 5000
        digest = hashlib.sha256(data).hexdigest()
        stored = await storage.put_file(f"{ns}/0.png", str(local_file(data)), content_type="image/png", sha256=digest)
        assert (stored.size, stored.sha256) == (len(data), digest)
        info = await storage.info(f"{ns}/0.png")
        assert info is not None and info.sha256 in ("", digest)

    async def test_put_file_of_a_large_file_arrives_whole(self, storage: Storage, ns: str, local_file) -> None:  # type: ignore[no-untyped-def]
        """Larger than two S3 parts of 8 MiB, so a multipart upload where there is one."""
        data = os.urandom(17 * 1024 * 1024 + 3)
        stored = await storage.put_file(f"{ns}/big.bin", local_file(data), content_type="application/octet-stream")
        assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert hashlib.sha256(await storage.get(f"{ns}/big.bin")).digest() == hashlib.sha256(data).digest()
        assert await storage.read_range(f"{ns}/big.bin", len(data) - 5, len(data) + 5) == data[-5:]
        info = await storage.info(f"{ns}/big.bin")
        assert info is not None and info.size == len(data) and info.sha256 in ("", stored.sha256)
        assert await storage.list(ns) == [f"{ns}/big.bin"]

    async def test_put_file_of_an_empty_file(self, storage: Storage, ns: str, local_file) -> None:  # type: ignore[no-untyped-def]
        stored = await storage.put_file(f"{ns}/empty.bin", local_file(b""), content_type="application/octet-stream")
        assert (stored.size, stored.sha256) == (0, hashlib.sha256(b"").hexdigest())
        assert await storage.get(f"{ns}/empty.bin") == b""

    async def test_put_file_overwrites_and_leaves_no_temporary_objects(
        self, storage: Storage, ns: str, local_file
    ) -> None:  # type: ignore[no-untyped-def]
        key = f"{ns}/0.png"
        await storage.put_file(key, local_file(b"long" * 1000), content_type="image/png")
        await storage.put_file(key, local_file(b"short"), content_type="image/png")
        assert await storage.get(key) == b"short"
        assert await storage.list(ns) == [key]

    async def test_put_file_of_a_missing_file_is_a_permanent_storage_error(
        self, storage: Storage, ns: str, tmp_path: Path
    ) -> None:
        with pytest.raises(StorageError) as caught:
            await storage.put_file(f"{ns}/0.png", tmp_path / "never-written.png", content_type="image/png")
        assert not caught.value.transient, "trying again cannot bring the file back"
        assert await storage.list(ns) == []

    @pytest.mark.parametrize("bad", BAD_KEYS)
    async def test_put_file_rejects_bad_keys(self, storage: Storage, bad: str, local_file) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(ValidationError):
            await storage.put_file(bad, local_file(b"x"), content_type="image/png")

    async def test_readers_never_see_a_partial_object_from_put_file(
        self, storage: Storage, ns: str, local_file
    ) -> None:  # type: ignore[no-untyped-def]
        files = [local_file(v) for v in VERSIONS]

        async def put(key: str, i: int) -> None:
            await storage.put_file(key, files[i], content_type="application/octet-stream")

        await _readers_see_whole_versions(storage, ns, put)

    async def test_signed_url_is_none_or_downloads_the_exact_bytes(self, storage: Storage, ns: str) -> None:
        key = f"{ns}/0.png"
        data = bytes(range(256)) * 10
        await storage.put(key, data, content_type="image/png")
        url = await storage.signed_url(key, expires_in=60)
        if url is None:
            return  # the API serves this storage's files behind its own signed links
        assert url.startswith(("http://", "https://"))
        assert await asyncio.to_thread(http_get, url) == (200, data)


class ExpiringSignedUrlContract:
    """For storages that hand out direct URLs (S3): add to the test class beside :class:`StorageContract`."""

    async def test_signed_url_is_refused_after_expiry(self, storage: Storage, ns: str) -> None:
        key = f"{ns}/0.png"
        await storage.put(key, b"secret", content_type="image/png")
        url = await storage.signed_url(key, expires_in=1)
        assert url is not None, "a storage in this suite hands out direct URLs"
        await asyncio.sleep(2.1)  # signing times are whole seconds
        status, body = await asyncio.to_thread(http_get, url)
        assert 400 <= status < 500
        assert body != b"secret"


#: Two versions of one object, of different sizes, for the partial-read tests.
VERSIONS = [b"a" * (1 << 20), b"b" * (3 << 20)]


async def _readers_see_whole_versions(storage: Storage, ns: str, put: Any) -> None:
    """While ``put(key, i)`` rewrites one key with :data:`VERSIONS` six times, two readers only ever get a whole
    version of it."""
    key = f"{ns}/big.bin"
    await put(key, 0)
    writing = True
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while writing:
            data = await storage.get(key)
            assert data in VERSIONS, f"read {len(data)} bytes, a partial object"
            reads += 1

    async def writer() -> None:
        nonlocal writing
        try:
            for i in range(6):
                await put(key, (i + 1) % 2)
        finally:
            writing = False

    await asyncio.gather(writer(), reader(), reader())
    assert reads > 0
    assert await storage.list(ns) == [key]
