"""Submit throughput and latency of ``POST /api/v1/jobs`` against a minimal Sanic handler doing one Redis SET (issue 3).

    .venv/bin/python benchmarks/bench_submit.py [--requests 2000] [--concurrency 32] [--rounds 2]

Two servers run in their own processes, one at a time, each a single-process Sanic on loopback against the same
Redis server:

- ``baseline``: ``POST /submit`` reads the body and does one Redis ``SET``, answers 202 with an id.
- ``comfyflow``: the real API (``create_app``, auth off, no workers): strict JSON, pydantic validation, admission
  control (queue depth), the submit Lua script (job hash, queue stream, owner index, event), the job view.

This process is the load generator: an aiohttp client with ``--concurrency`` requests in flight over keep-alive
connections, after a warm-up. Per server: throughput (requests/s), latency p50/p99 (ms), and the server's CPU per
request (psutil). Ratios are comfyflow / baseline from the same run; with ``--rounds`` > 1 the servers alternate and
each one's best round is reported. Needs the Redis server on 127.0.0.1:6379 (COMFYFLOW_BENCH_REDIS_URL). Run it
alone: other load on the machine distorts the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from redis.asyncio import Redis
from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic.response import json as json_response

REDIS_URL = os.environ.get("COMFYFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = {"prompt": "a red fox in the snow, golden hour", "width": 512, "height": 512, "steps": 20, "sampler": "euler"}


# --- the servers (run in a subprocess: python bench_submit.py --serve NAME --port N --prefix P) -----------------


def serve_baseline(port: int, prefix: str) -> None:
    app = Sanic("bench_baseline")

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        app.ctx.redis = Redis.from_url(REDIS_URL)

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        await app.ctx.redis.aclose()

    @app.get("/ping")
    async def ping(request: Request) -> HTTPResponse:
        return json_response({"ok": True})

    @app.post("/submit")
    async def submit(request: Request) -> HTTPResponse:
        job_id = uuid.uuid4().hex
        await request.app.ctx.redis.set(f"{prefix}:baseline:{job_id}", request.body, ex=600)
        return json_response({"job_id": job_id, "status": "queued"}, status=202)

    app.run(host="127.0.0.1", port=port, single_process=True, access_log=False, motd=False)


def serve_comfyflow(port: int, prefix: str, home: str, log_level: str) -> None:
    from comfyflow import logs
    from comfyflow.api.app import create_app
    from comfyflow.api.policy import OpenPolicy
    from comfyflow.settings import Settings

    settings = Settings(
        home=Path(home), key_prefix=prefix, redis_url=REDIS_URL, prefect_enabled=False, auth="none",
        max_queue_depth=10_000_000, log_level=log_level,  # type: ignore[arg-type]
    )  # type: ignore[call-arg]  # fmt: skip
    logs.configure(settings.log_level, "json")
    app = create_app(settings, run_worker=False, policy=OpenPolicy())
    app.run(host="127.0.0.1", port=port, single_process=True, access_log=False, motd=False)


# --- the load generator -------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1000


async def _load(url: str, requests: int, concurrency: int, make_body: Any) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal errors
            for i in counter:
                body = make_body(i)
                started = time.perf_counter()
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 202:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        return time.perf_counter() - started, latencies, errors


def _body(i: int) -> bytes:
    return json.dumps({**BODY, "seed": i}).encode()


async def _wait_up(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.returncode is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the server at {url} did not come up")


async def run_server(name: str, args: argparse.Namespace, prefix: str, home: str) -> Result:
    from comfyflow.testing.api_server import free_port

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", name, "--port", str(port), "--prefix", prefix, "--home", home,
           "--log-level", args.log_level]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        await _wait_up(f"{base}/ping", proc)
        path = "/submit" if name == "baseline" else "/api/v1/jobs"
        await _load(base + path, args.warmup, args.concurrency, _body)
        server = psutil.Process(proc.pid)
        cpu_before = sum(server.cpu_times()[:2])
        seconds, latencies, errors = await _load(base + path, args.requests, args.concurrency, _body)
        cpu = sum(server.cpu_times()[:2]) - cpu_before
        return Result(name, args.requests, seconds, latencies, cpu, errors)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def cleanup(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.delete(*batch)
            batch.clear()
    if batch:
        await redis.delete(*batch)
    await redis.aclose()


def report(best: dict[str, Result], args: argparse.Namespace) -> None:
    print(f"\n{args.requests} requests, concurrency {args.concurrency}, best of {args.rounds} round(s), "
          f"server log level {args.log_level}")  # fmt: skip
    print(f"{'server':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'CPU ms/req':>11} {'errors':>7}")
    for r in best.values():
        mean = statistics.fmean(r.latencies) * 1000
        print(f"{r.name:<10} {r.rps:>9.0f} {r.pct(0.50):>8.2f} {r.pct(0.99):>8.2f} {mean:>8.2f} "
              f"{r.cpu_ms_per_request:>11.3f} {r.errors:>7}")  # fmt: skip
    base, cf = best["baseline"], best["comfyflow"]
    print(f"comfyflow / baseline: throughput x{cf.rps / base.rps:.2f}, p50 x{cf.pct(0.5) / base.pct(0.5):.2f}, "
          f"p99 x{cf.pct(0.99) / base.pct(0.99):.2f}, CPU per request x{cf.cpu_ms_per_request / base.cpu_ms_per_request:.2f}")  # fmt: skip  # noqa: E501


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    home = tempfile.mkdtemp(prefix="bench-submit-")
    best: dict[str, Result] = {}
    try:
        for round_no in range(args.rounds):
            for name in ("baseline", "comfyflow"):
                r = await run_server(name, args, prefix, home)
                print(f"round {round_no + 1} {name:<10} {r.rps:8.0f} req/s  p50 {r.pct(0.5):6.2f} ms  "
                      f"p99 {r.pct(0.99):6.2f} ms  errors {r.errors}", flush=True)  # fmt: skip
                if name not in best or r.rps > best[name].rps:
                    best[name] = r
    finally:
        await cleanup(prefix)
    report(best, args)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="comfyflow's log level (INFO is the default of a deployment)")  # fmt: skip
    p.add_argument("--serve", choices=["baseline", "comfyflow"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.serve == "baseline":
        serve_baseline(arguments.port, arguments.prefix)
    elif arguments.serve == "comfyflow":
        serve_comfyflow(arguments.port, arguments.prefix, arguments.home, arguments.log_level)
    else:
        asyncio.run(main(arguments))
