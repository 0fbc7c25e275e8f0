"""``FsspecStorage``: comfyflow's artifact store on any fsspec URL (local folder, memory, S3 through s3fs)."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import mimetypes
import os
import threading
from contextlib import suppress
from typing import Any

from fsspec.core import split_protocol, url_to_fs
from fsspec.spec import AbstractFileSystem

from comfyflow.errors import ConfigError, StorageError, ValidationError
from comfyflow.plugins.protocols import StoredObject
from comfyflow_fsspec import aio, files, s3
from comfyflow_fsspec.failures import classify
from comfyflow_fsspec.keys import check_key, check_prefix, is_temp, temp_key

MAX_EXPIRES_IN = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live
_HASH_IN_THREAD = 1 << 20  # hash bigger payloads off the event loop


class FsspecStorage:
    """Artifacts under one root of an fsspec filesystem, keyed by relative paths such as ``jobs/{id}/0.png``.

    The filesystem is opened once here and shared by every call, from any event loop; ``aclose()`` releases
    it. Writes are atomic: S3 objects appear in one PUT (multipart uploads on completion); local and memory
    files are written to a hidden temporary sibling and renamed over the key. ``put_file`` uploads a local file
    in bounded pieces (8 MiB S3 parts, one at a time), never reading it whole. Errors are classified, never
    retried here: a missing object is ``NotFound``, anything else ``StorageError`` naming the key and cause.

    Args:
        url: fsspec URL of the root, e.g. ``file:///srv/artifacts``, ``memory://cf``, ``s3://bucket/prefix``.
        options: fsspec options for the filesystem (for S3: ``endpoint_url``, ``key``, ``secret``,
            ``client_kwargs``, ``config_kwargs``...). ``asynchronous`` is ignored (see
            ``comfyflow_fsspec.aio``).
        public_endpoint: the S3 endpoint clients can reach; presigned URLs are signed for it, so they never
            name an internal host. Defaults to the storage's own endpoint.
        signing_key: accepted so every storage plugin takes the same arguments; unused here, because file and
            memory storages hand out no URLs (the API signs its own links) and S3 URLs are signed by S3.
    Raises:
        ConfigError: when the URL's protocol is unknown or its package missing, or an S3 URL names no bucket.
    """

    def __init__(
        self,
        url: str,
        *,
        options: dict[str, Any] | None = None,
        public_endpoint: str | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        self.url = url
        self.public_endpoint = public_endpoint.rstrip("/") if public_endpoint else None
        self.signing_key = signing_key
        opts = {k: v for k, v in (options or {}).items() if k != "asynchronous"}
        opts.setdefault("skip_instance_cache", True)  # ours alone, so aclose() cannot break another storage
        if (split_protocol(url)[0] or "file") in s3.S3_PROTOCOLS:
            opts = s3.prepare_options(opts)
        try:
            fs, root = url_to_fs(url, **opts)
        except (ImportError, ValueError, TypeError) as exc:  # unknown protocol, missing package, bad option
            raise ConfigError(
                f"Storage URL {url!r} cannot be opened: {exc}. Use a URL fsspec knows (file://, memory://, "
                "s3://bucket/prefix) and install its package (s3fs for s3://).",
                details={"url": url},
            ) from exc
        self._fs: AbstractFileSystem | None = fs
        self._root = root.rstrip("/")
        self._is_s3 = s3.is_s3(fs)
        if self._is_s3 and not self._root:
            raise ConfigError(f"Storage URL {url!r} names no bucket; use s3://<bucket>[/<prefix>].")
        if self._is_s3:
            fs.retries = s3.FS_RETRIES  # s3fs tries a timed-out call 5 times itself; the store step retries too
        probe = fs._strip_protocol(self._join("x"))
        self._base = probe[:-1]  # what every full path of a key starts with, as the filesystem spells it
        self._signer = s3.public_signer(opts, self.public_endpoint) if self._is_s3 else None

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"

    async def __aenter__(self) -> FsspecStorage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Write ``data`` at ``key`` atomically, replacing any object there, and verify its size.

        Args:
            key: relative path such as ``jobs/{job_id}/0.png``.
            data: the whole object.
            content_type: MIME type, stored with the object on S3.
        Returns:
            The key, size, sha256 (hex) and content type of what was written.
        Raises:
            ValidationError: when the key is not valid.
            StorageError: when the write fails or the size read back differs.
        """
        path = self._path(key)
        data = bytes(data)
        digest = await _sha256(data)
        fs = self._open_fs(key)
        try:
            if self._is_s3:
                meta = {"sha256": digest}
                await aio.call(fs, "pipe_file", path, data, ContentType=content_type, Metadata=meta)
                stored = await self._stat(fs, key, path)
                # Another digest: a concurrent put replaced ours after S3 acknowledged it (last writer wins).
                size = len(data) if stored.sha256 not in ("", digest) else stored.size
            else:
                temp = self._join(temp_key(key))
                size = await asyncio.to_thread(files.write_then_rename, fs, path, temp, data)
        except Exception as exc:
            raise classify(self.url, "put", key, exc) from exc
        if size != len(data):
            raise StorageError(
                f"Storage put of key {key!r} in {self.url} could not be verified: {size} bytes stored, "
                f"{len(data)} written.",
                details={"key": key, "operation": "put", "size": size, "expected": len(data)},
            )
        return StoredObject(key=key, size=size, sha256=digest, content_type=content_type)

    async def put_file(
        self, key: str, path: str | os.PathLike[str], *, content_type: str, sha256: str | None = None
    ) -> StoredObject:
        """Write the local file at ``path`` to ``key`` atomically, in bounded pieces, and verify its size.

        S3: one PUT below two parts, else a multipart upload of 8 MiB parts, one at a time (the object appears
        on completion; a failed or cancelled upload is aborted). Local and memory: copied to a hidden temporary
        sibling, renamed over the key (removed instead when the caller was cancelled).

        Args:
            key: relative path such as ``jobs/{job_id}/0.png``.
            path: the local file.
            content_type: MIME type, stored with the object on S3.
            sha256: the file's digest when the caller has it (recorded as given); else computed here.
        Returns:
            The key, size, sha256 (hex) and content type of what was written.
        Raises:
            ValidationError: when the key is not valid.
            StorageError: when the file cannot be read (not transient), the write fails or the size read back
                differs.
        """
        target = self._path(key)
        fs = self._open_fs(key)
        source = os.fspath(path)
        try:
            expected = await asyncio.to_thread(os.path.getsize, source)
            digest = sha256 or await asyncio.to_thread(files.sha256_of, source)
        except OSError as exc:
            error = StorageError(
                f"Storage put of key {key!r} in {self.url} cannot read the local file {source!r}: {exc}",
                details={"key": key, "operation": "put", "cause": type(exc).__name__},
            )
            error.transient = False  # the file will not come back by trying again
            raise error from exc
        abandoned = threading.Event()
        try:
            if self._is_s3:
                meta = {"sha256": digest}
                await aio.on_fs_loop(fs, s3.put_file(fs, source, target, ContentType=content_type, Metadata=meta))
                stored = await self._stat(fs, key, target)
                # Another digest: a concurrent put replaced ours after S3 acknowledged it (last writer wins).
                size = expected if stored.sha256 not in ("", digest) else stored.size
            else:
                temp = self._join(temp_key(key))
                size = await asyncio.to_thread(
                    files.copy_then_rename, fs, source, target, temp, expected, abandoned
                )
        except asyncio.CancelledError:
            abandoned.set()  # the copy still running in its thread removes its temporary file, renames nothing
            raise
        except Exception as exc:
            raise classify(self.url, "put", key, exc) from exc
        if size != expected:
            raise StorageError(
                f"Storage put of key {key!r} in {self.url} could not be verified: {size} bytes stored, "
                f"{expected} in {source!r}.",
                details={"key": key, "operation": "put", "size": size, "expected": expected},
            )
        return StoredObject(key=key, size=size, sha256=digest, content_type=content_type)

    async def get(self, key: str) -> bytes:
        """Read a whole object.

        Raises:
            ValidationError: when the key is not valid.
            NotFound: when there is no object at ``key``.
            StorageError: on any other failure.
        """
        path = self._path(key)
        try:
            return await aio.call(self._open_fs(key), "cat_file", path)
        except Exception as exc:
            raise classify(self.url, "get", key, exc, reading=True) from exc

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """Read bytes ``[start, end)``; like a slice, bytes past the end of the object are not returned.

        Raises:
            ValidationError: when the key is not valid, or not ``0 <= start <= end``.
            NotFound: when there is no object at ``key``.
            StorageError: on any other failure.
        """
        path = self._path(key)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ValidationError(
                f"Byte range [{start}, {end}) of key {key!r} is not valid; "
                "expected integers 0 <= start <= end.",
                details={"key": key, "start": start, "end": end},
            )
        fs = self._open_fs(key)
        try:
            # Clamp first: S3 answers 416 past the end and the whole object for an empty range.
            end = min(end, (await self._stat(fs, key, path)).size)
            if start >= end:
                return b""
            return await aio.call(fs, "cat_file", path, start=start, end=end)
        except Exception as exc:
            raise classify(self.url, "read_range", key, exc, reading=True) from exc

    async def info(self, key: str) -> StoredObject | None:
        """What is known of the object at ``key``.

        Returns:
            Size and content type (S3: as stored; others: guessed from the extension) and the sha256 recorded
            at put time (S3 only; ``""`` elsewhere), or None when there is no object at ``key``.
        Raises:
            ValidationError: when the key is not valid.
            StorageError: when the backend cannot be asked.
        """
        path = self._path(key)
        fs = self._open_fs(key)
        try:
            return await self._stat(fs, key, path)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except Exception as exc:
            raise classify(self.url, "info", key, exc) from exc

    async def list(self, prefix: str) -> list[str]:
        """Keys in the folder ``prefix`` (``jobs/abc`` or ``jobs/abc/``: not ``jobs/abcd/...``), sorted.

        Args:
            prefix: a folder; ``""`` lists the whole store.
        Returns:
            Sorted keys; temporary objects of unfinished puts are never listed.
        Raises:
            ValidationError: when the prefix is not valid.
            StorageError: when listing fails.
        """
        prefix = check_prefix(prefix, allow_empty=True)
        try:
            return sorted(k for k in await self._find(prefix) if not is_temp(k))
        except Exception as exc:
            raise classify(self.url, "list", prefix, exc) from exc

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object in the folder ``prefix``. Idempotent: a second call deletes nothing.

        Returns:
            How many objects were deleted (leftover temporary objects are deleted but not counted).
        Raises:
            ValidationError: when the prefix is not valid or empty (deleting the whole store is refused).
            StorageError: when deleting fails.
        """
        prefix = check_prefix(prefix, allow_empty=False)
        try:
            keys = await self._find(prefix)
            paths = [self._join(k) for k in keys]
            fs = self._open_fs(prefix)
            if self._is_s3:
                if paths:
                    await aio.call(fs, "rm", paths)  # one DeleteObjects per 1000 keys; missing keys are fine
            else:
                await asyncio.to_thread(files.remove_files_and_folder, fs, paths, self._join(prefix))
        except Exception as exc:
            raise classify(self.url, "delete_prefix", prefix, exc) from exc
        return sum(1 for k in keys if not is_temp(k))

    async def signed_url(self, key: str, *, expires_in: int) -> str | None:
        """A presigned GET URL on S3, signed for ``public_endpoint`` when set.

        Args:
            key: the object; its existence is not checked.
            expires_in: lifetime in seconds, 1 to 7 days.
        Returns:
            The URL, or None for file and memory storages (the API serves those with its own links).
        Raises:
            ValidationError: when the key or lifetime is not valid.
            StorageError: when the URL cannot be made.
        """
        path = self._path(key)
        if not (isinstance(expires_in, int) and 1 <= expires_in <= MAX_EXPIRES_IN):
            raise ValidationError(
                f"URL lifetime {expires_in!r} s for key {key!r} is not valid; "
                f"expected 1 to {MAX_EXPIRES_IN} s.",
                details={"key": key, "expires_in": expires_in},
            )
        fs = self._open_fs(key)
        if not self._is_s3:
            return None
        signer: Any = self._signer or fs
        try:
            return await aio.on_fs_loop(signer, signer._url(path, expires=expires_in))
        except Exception as exc:
            raise classify(self.url, "signed_url", key, exc) from exc

    async def aclose(self) -> None:
        """Release the filesystem's clients. Later calls raise StorageError; closing twice is harmless."""
        fs, signer, self._fs, self._signer = self._fs, self._signer, None, None
        if self._is_s3:
            for each in (fs, signer):
                if each is not None:
                    with suppress(Exception):  # closing is best effort: the process may be going down
                        await aio.on_fs_loop(each, s3.close(each))

    def _join(self, key: str) -> str:
        return f"{self._root}/{key}" if self._root else key

    def _path(self, key: str) -> str:
        return self._join(check_key(key))

    def _open_fs(self, key: str) -> AbstractFileSystem:
        if self._fs is None:
            raise StorageError(
                f"Storage {self.url} is closed; cannot use key {key!r}. Open a new FsspecStorage.",
                details={"key": key},
            )
        return self._fs

    async def _stat(self, fs: AbstractFileSystem, key: str, path: str) -> StoredObject:
        """One request; raises FileNotFoundError when there is no object (a folder is not one)."""
        if self._is_s3:
            head = await aio.on_fs_loop(fs, s3.head(fs, path))
            sha256, content_type = head.get("Metadata", {}).get("sha256", ""), head.get("ContentType")
            return StoredObject(key, head["ContentLength"], sha256, content_type or _guess_type(key))
        found = await aio.call(fs, "info", path)
        if found.get("type") != "file":
            raise FileNotFoundError(path)
        return StoredObject(key, found["size"], "", _guess_type(key))

    async def _find(self, prefix: str) -> builtins.list[str]:  # `list` here is the method above
        """Keys (temporary ones included) equal to ``prefix`` or under ``prefix/``."""
        fs = self._open_fs(prefix)
        names = await aio.call(fs, "find", self._join(prefix) if prefix else self._root)
        keys = [n[len(self._base) :] for n in names if n.startswith(self._base)]
        return [k for k in keys if not prefix or k == prefix or k.startswith(f"{prefix}/")]


async def _sha256(data: bytes) -> str:
    if len(data) > _HASH_IN_THREAD:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


def _guess_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"
