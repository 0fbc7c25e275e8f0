"""``GET /api/v1/jobs/{id}`` latency while ComfyUI or S3 answer 5 s late (issue 11, item 7).

    .venv/bin/python benchmarks/bench_slow_deps.py [--seconds 10] [--delay 5] [--concurrency 8]

One ``comfyflow serve --workers 4`` process (API and workers on one event loop, as on a laptop) against the Redis
server, a fake ComfyUI and moto's S3 in this process, whose answers can be made late. Per phase, jobs keep
flowing (one submitted every 0.2 s) while ``--concurrency`` clients read one job over and over; the latency p50/p99
of those reads is reported, with the ratio to the baseline phase of the same run:

- ``baseline``: nothing late;
- ``comfyui_late``: every HTTP answer of ComfyUI comes ``--delay`` seconds late;
- ``s3_late``: every S3 answer comes ``--delay`` seconds late.

A slow dependency must cost the waiting jobs time, never the API's readers: the ratios should stay near 1.
Needs the Redis server on 127.0.0.1:6379 (COMFYFLOW_BENCH_REDIS_URL). Run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from comfyflow.testing.api_server import free_port
from comfyflow.testing.fake_comfyui import FakeComfyUI
from comfyflow.testing.moto_server import MotoS3Server

REDIS = os.environ.get("COMFYFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


async def _phase(http: aiohttp.ClientSession, base: str, job_id: str, seconds: float, concurrency: int) -> list[float]:
    stop = time.monotonic() + seconds
    latencies: list[float] = []

    async def reader() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            async with http.get(f"{base}/api/v1/jobs/{job_id}") as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append(time.perf_counter() - started)

    async def submitter() -> None:
        while time.monotonic() < stop:
            async with http.post(f"{base}/api/v1/jobs", json=BODY) as r:
                assert r.status == 202, await r.text()
            await asyncio.sleep(0.2)

    await asyncio.gather(submitter(), *(reader() for _ in range(concurrency)))
    return latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 100 else max(values) * 1000


async def main(seconds: float, delay: float, concurrency: int) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    port = free_port()
    with tempfile.TemporaryDirectory() as home, MotoS3Server(bucket="bench") as s3:
        async with FakeComfyUI(render_time=0.3, workdir=Path(home) / "fake") as fake:
            ep = s3.endpoint
            env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYFLOW_")}
            env.update({
                "COMFYFLOW_HOME": home, "COMFYFLOW_REDIS_URL": REDIS, "COMFYFLOW_KEY_PREFIX": prefix,
                "COMFYFLOW_BACKENDS": fake.url, "COMFYFLOW_PREFECT_ENABLED": "false", "COMFYFLOW_AUTH": "none",
                "COMFYFLOW_STORAGE_URL": f"s3://{ep.bucket}/{prefix}",
                "COMFYFLOW_STORAGE_OPTIONS": json.dumps(ep.storage_options()), "COMFYFLOW_LOG_LEVEL": "WARNING",
                "COMFYFLOW_MAX_QUEUE_DEPTH": "100000",
            })  # fmt: skip
            argv = [sys.executable, "-m", "comfyflow.cli", "serve", "--port", str(port), "--workers", "4"]
            proc = await asyncio.to_thread(
                subprocess.Popen, argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            base = f"http://127.0.0.1:{port}"
            try:
                async with aiohttp.ClientSession() as http:
                    for _ in range(600):
                        with contextlib.suppress(aiohttp.ClientError):
                            async with http.get(f"{base}/healthz") as r:
                                if r.status == 200:
                                    break
                        await asyncio.sleep(0.1)
                    async with http.post(f"{base}/api/v1/jobs", json=BODY) as r:
                        job_id = (await r.json())["job_id"]
                    await _phase(http, base, job_id, 2.0, concurrency)  # warm-up
                    results = {}
                    for name in ("baseline", "comfyui_late", "s3_late"):
                        fake.faults.delay = delay if name == "comfyui_late" else 0.0
                        s3.delay = delay if name == "s3_late" else 0.0
                        results[name] = await _phase(http, base, job_id, seconds, concurrency)
                    fake.faults.delay, s3.delay = 0.0, 0.0
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 30)
                redis = Redis.from_url(REDIS)
                keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
                if keys:
                    await redis.delete(*keys)
                await redis.aclose()
    b50, b99 = _pct(results["baseline"], 50), _pct(results["baseline"], 99)
    print(f"{'phase':<14} {'reads':>6} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>6} {'p99 x':>6}")
    for name, lat in results.items():
        p50, p99 = _pct(lat, 50), _pct(lat, 99)
        print(f"{name:<14} {len(lat):>6} {p50:>8.1f} {p99:>8.1f} {p50 / b50:>6.2f} {p99 / b99:>6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.delay, args.concurrency))
