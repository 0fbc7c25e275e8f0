"""The staging folder: output files fetched from ComfyUI wait in ``<home>/staging/{job_id}/{attempt}/`` until
they are stored. Removed at the end of every attempt, whatever its outcome; a sweep removes what a killed
process left behind (folders of attempts that are not running any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path

from redis.asyncio import Redis

from comfyflow.core.keys import Keys


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
