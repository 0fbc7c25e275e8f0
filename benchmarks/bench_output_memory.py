"""Worker memory while it fetches a large output from ComfyUI and stores it (issue 12 item 5).

    flock /tmp/comfyflow-bench.lock .venv/bin/python benchmarks/bench_output_memory.py [--mib 64] [--storage local|s3]

One worker (no Prefect) runs two txt2img jobs on the fake ComfyUI over real sockets. The render goes through the
real ``ComfyUIBackend``; a thin wrapper adds one more output to the second job's result: a ``--mib`` MiB video
file in the fake's output folder (as a video node leaves one), served by the fake's ``/view``. The first job (a
64x64 PNG only) is the baseline from the same run. Printed per job: the peak of Python allocations (tracemalloc,
reset before each job), the growth of the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``),
wall time, and the ratio of the large job's extra peak to the output's size. ``--storage s3`` stores on moto's S3
served from a child process, so its own buffers do not count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from comfyflow.core.runtime import Runtime
from comfyflow.core.worker import Worker
from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.plugins.comfyui.backend import ComfyUIBackend
from comfyflow.plugins.protocols import OutputRef
from comfyflow.settings import Settings
from comfyflow.testing.extra_output import ExtraOutput
from comfyflow.testing.fake_comfyui import FakeComfyUI
from comfyflow.testing.moto_server import moto_s3_process

REDIS_URL = os.environ.get("COMFYFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def peak_rss_reset() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def run_job(rt: Runtime, worker_stop: asyncio.Event) -> tuple[Any, float]:
    started = time.perf_counter()
    job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
    while True:
        done = await rt.store.get(job.job_id)
        if done is not None and done.status.terminal:
            return done, time.perf_counter() - started
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def worker_running(rt: Runtime) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(rt).run(stop, grace=2))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def main_async(mib: int, storage: str) -> None:
    size = mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-output-memory-") as tmp, contextlib.ExitStack() as stack:
        s3 = stack.enter_context(moto_s3_process("bench")) if storage == "s3" else None
        async with FakeComfyUI(render_time=0.0, workdir=Path(tmp) / "fake") as fake:
            big = Path(fake.dirs.output) / "big_00001_.webm"
            digest = write_random(big, size)
            prefix = f"bench{uuid.uuid4().hex[:10]}"
            settings = Settings(
                _env_file=None, home=Path(tmp) / "home", key_prefix=prefix, prefect_enabled=False,  # type: ignore[call-arg]
                max_output_bytes=max(size, 1 << 20) + 1, store_timeout_seconds=60,
                storage_call_timeout_seconds=60, **({"storage_url": f"s3://{s3.bucket}/artifacts",
                                                     "storage_options": s3.storage_options()} if s3 else {}),
            )  # fmt: skip
            backend = ExtraOutput(ComfyUIBackend(fake.url, settings=settings))
            rt = await Runtime.open(settings, REDIS_URL, backends={fake.url: backend})
            try:
                tracemalloc.start()
                async with worker_running(rt) as stop:
                    rows = []
                    for label, ref in (("baseline (64x64 PNG)", None),
                                       (f"+ {mib} MiB output", OutputRef("9", "gifs", big.name))):  # fmt: skip
                        backend.ref = ref
                        tracemalloc.reset_peak()
                        peak_rss_reset()
                        rss_before = rss()
                        done, wall = await run_job(rt, stop)
                        _, traced = tracemalloc.get_traced_memory()
                        assert done.status == JobState.SUCCEEDED, done.error
                        if ref is not None:
                            assert any(a.sha256 == digest and a.size == size for a in done.result.artifacts)
                        rows.append((label, traced, peak_rss() - rss_before, wall))
                tracemalloc.stop()
            finally:
                keys = [k async for k in rt.redis.scan_iter(match=f"{prefix}:*", count=1000)]
                if keys:
                    await rt.redis.delete(*keys)
                await rt.aclose()
    load = os.getloadavg()
    print(f"storage={storage} output={mib} MiB load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'job':<24}{'traced peak MiB':>17}{'peak RSS growth MiB':>21}{'wall s':>9}")
    for label, traced, rss_growth, wall in rows:
        print(f"{label:<24}{traced / 2**20:>17.1f}{rss_growth / 2**20:>21.1f}{wall:>9.2f}")
    extra = rows[1][1] - rows[0][1]
    print(f"extra traced peak / output size: {extra / size:.3f} (1.0 = the whole output in memory once)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    args = parser.parse_args()
    asyncio.run(main_async(args.mib, args.storage))


if __name__ == "__main__":
    main()
