"""The staging folder: output files fetched from ComfyUI wait in ``<home>/staging/{job_id}/{attempt}/`` until
they are stored. Removed at the end of every attempt, whatever its outcome; a sweep removes what a killed
process left behind (folders of attempts that are not running any more).

Outputs are written here chunk by chunk as they arrive (:func:`write_stream`), hashed on the way, so a worker
holds about one chunk of an output in memory, never the whole file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from redis.asyncio import Redis

from comfyflow.core.keys import Keys
from comfyflow.errors import OutputTooLarge

#: Chunks are gathered up to this size before one write (one thread hop) to the staged file.
WRITE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StagedFile:
    path: Path
    size: int
    sha256: str


async def write_stream(chunks: AsyncIterator[bytes], path: Path, *, max_bytes: int, name: str) -> StagedFile:
    """Write ``chunks`` to ``path`` (created or replaced), hashing them as they come, and refuse more than
    ``max_bytes`` whatever the source announced. On any failure, and when cancelled, the partial file is removed.

    Raises:
        OutputTooLarge: once more than ``max_bytes`` bytes have arrived.
        OSError: when the file cannot be written.
    """
    digest, size = hashlib.sha256(), 0
    pending: list[bytes] = []
    pending_size = 0
    out = await asyncio.to_thread(open, path, "wb")
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise OutputTooLarge(
                    f"{name} is larger than the {max_bytes}-byte cap (at least {size} bytes arrived); nothing was "
                    "stored; raise COMFYFLOW_MAX_OUTPUT_BYTES to accept it",
                    details={"file": name, "size_at_least": size, "max_bytes": max_bytes},
                )
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_BYTES:
                await asyncio.to_thread(_write, out, digest, pending)
                pending, pending_size = [], 0
        if pending:
            await asyncio.to_thread(_write, out, digest, pending)
        await asyncio.to_thread(out.close)
    except BaseException:
        # Not awaited: this also runs when cancelled. close() waits for a write still running in its thread.
        with contextlib.suppress(OSError):
            out.close()
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - one syscall, and no await while being cancelled
        raise
    return StagedFile(path, size, digest.hexdigest())


def _write(out: BinaryIO, digest: hashlib._Hash, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)


def attempt_folder(staging: Path, job_id: str, attempt: int) -> Path:
    return Path(staging) / job_id / str(attempt)


def remove_attempt(staging: Path, job_id: str, attempt: int) -> None:
    """Remove one attempt's staged files, and the job's folder once empty."""
    _remove(attempt_folder(staging, job_id, attempt))


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: another attempt of the job stages here too
        folder.parent.rmdir()


async def sweep(staging: Path, redis: Redis, keys: Keys, *, min_age: float = 60.0) -> int:
    """Remove staged folders of attempts not running now (their process was killed). Returns how many.

    ``min_age`` (seconds since the folder last changed) spares an attempt that was just claimed.
    """
    candidates: list[tuple[Path, str, str]] = []
    now = time.time()
    for job_dir in await asyncio.to_thread(_folders, Path(staging)):
        for attempt_dir in await asyncio.to_thread(_folders, job_dir):
            with contextlib.suppress(OSError):
                if now - attempt_dir.stat().st_mtime >= min_age:
                    candidates.append((attempt_dir, job_dir.name, attempt_dir.name))
    if not candidates:
        return 0
    pipe = redis.pipeline(transaction=False)
    for _, job_id, _ in candidates:
        pipe.hmget(keys.job(job_id), "state", "attempt")
    states = await pipe.execute()
    removed = 0
    for (folder, _job, attempt), (state, current) in zip(candidates, states, strict=True):
        running = state in (b"running", "running") and str(_s(current)) == attempt
        if not running:
            await asyncio.to_thread(_remove, folder)
            removed += 1
    return removed


def _folders(parent: Path) -> list[Path]:
    try:
        return [p for p in parent.iterdir() if p.is_dir()]
    except OSError:  # removed meanwhile
        return []


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
