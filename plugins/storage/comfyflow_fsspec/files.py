"""Blocking steps for filesystems where one write is not atomic (local, memory); run in worker threads."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from contextlib import suppress

from fsspec.spec import AbstractFileSystem


def write_then_rename(fs: AbstractFileSystem, path: str, temp: str, data: bytes) -> int:
    """Write ``data`` to ``temp`` (a sibling of ``path``), check its size, then rename it over ``path``.

    Readers see the old object or the new one, never a partial one: the rename is atomic in one folder. The
    size is read back from ``temp`` before the rename, because afterwards a concurrent put may own ``path``.

    Returns:
        The size written; when it differs from ``len(data)`` nothing was renamed and ``temp`` is gone.
    Raises:
        IsADirectoryError: when a folder exists at ``path``.
        OSError: whatever the filesystem raises; ``temp`` is removed first.
    """
    return _then_rename(fs, path, temp, len(data), lambda: fs.pipe_file(temp, data))


def copy_then_rename(
    fs: AbstractFileSystem, source: str, path: str, temp: str, size: int, abandoned: threading.Event
) -> int:
    """Like :func:`write_then_rename`, from the local file ``source`` (``fs.put_file``: a kernel copy on a local
    filesystem, bounded blocks elsewhere), expected to be ``size`` bytes. When ``abandoned`` is set by then (the
    caller was cancelled), ``temp`` is removed instead of renamed.

    Raises:
        CopyAbandoned: when ``abandoned`` was set before the rename.
    """

    def copy() -> None:
        fs.put_file(source, temp)
        if abandoned.is_set():
            raise CopyAbandoned(path)

    return _then_rename(fs, path, temp, size, copy)


class CopyAbandoned(Exception):
    """Raised by :func:`copy_then_rename` when its caller gave up before the rename."""


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _then_rename(fs: AbstractFileSystem, path: str, temp: str, expected: int, write: Callable[[], None]) -> int:
    if fs.isdir(path):
        raise IsADirectoryError(f"a folder exists at {path}")
    fs.makedirs(fs._parent(path), exist_ok=True)
    try:
        write()
        size = fs.info(temp)["size"]
        if size == expected:
            fs.mv(temp, path)
    except BaseException:
        with suppress(Exception):
            fs.rm_file(temp)
        raise
    if size != expected:
        with suppress(Exception):
            fs.rm_file(temp)
    return int(size)


def remove_files_and_folder(fs: AbstractFileSystem, paths: list[str], folder: str) -> None:
    """Delete ``paths``, then ``folder`` and what is left in it. Files already gone are fine (idempotent)."""
    for path in paths:
        with suppress(FileNotFoundError):
            fs.rm_file(path)
    with suppress(FileNotFoundError):
        if fs.isdir(folder):
            fs.rm(folder, recursive=True)
