"""Blocking steps for filesystems where one write is not atomic (local, memory); run in worker threads."""

from __future__ import annotations

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
    if fs.isdir(path):
        raise IsADirectoryError(f"a folder exists at {path}")
    fs.makedirs(fs._parent(path), exist_ok=True)
    try:
        fs.pipe_file(temp, data)
        size = fs.info(temp)["size"]
        if size == len(data):
            fs.mv(temp, path)
    except BaseException:
        with suppress(Exception):
            fs.rm_file(temp)
        raise
    if size != len(data):
        with suppress(Exception):
            fs.rm_file(temp)
    return size


def remove_files_and_folder(fs: AbstractFileSystem, paths: list[str], folder: str) -> None:
    """Delete ``paths``, then ``folder`` and what is left in it. Files already gone are fine (idempotent)."""
    for path in paths:
        with suppress(FileNotFoundError):
            fs.rm_file(path)
    with suppress(FileNotFoundError):
        if fs.isdir(folder):
            fs.rm(folder, recursive=True)
