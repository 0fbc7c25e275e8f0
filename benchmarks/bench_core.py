"""comfyflow's cost per job against a bare aiohttp client doing the same ComfyUI calls (issue 2).

    .venv/bin/python benchmarks/bench_core.py [--jobs 200] [--concurrency 8] [--no-prefect]

A fake ComfyUI with zero render time runs in a subprocess. Each mode runs the same jobs (txt2img, distinct seeds)
sequentially and with ``--concurrency`` clients, each client waiting for its job before sending the next:

- ``bare``: one aiohttp client per job doing what comfyflow does on ComfyUI: open /ws, POST /prompt, wait for the
  prompt's end on the socket, GET /history/{id}, GET /view for each output. Nothing is stored.
- ``plain``: comfyflow's worker in this process with the plain runner (no Prefect): submit to Redis, claim,
  validate, GPU slot, render, fetch, store artifact + metadata.json on local disk, wait for the "done" event.
- ``prefect``: the same with each attempt a flow run from the ``generate`` deployment (comfyflow's executor)
  on a Prefect server backed by PostgreSQL (the test server of comfyflow.testing.prefect_server).

Per job: latency p50/p95, and CPU: this process (client + orchestrator), the Redis server (INFO cpu), and for
``prefect`` the Prefect server process tree and every PostgreSQL process (psutil). Ratios are to ``bare`` measured
in the same run. Starts a private redis-server (or uses COMFYFLOW_BENCH_REDIS_URL); ``prefect`` needs PostgreSQL as
the Prefect tests use it. Run it alone: other load on the machine distorts the CPU numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
from redis.asyncio import Redis

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from _harness import cpu as _cpu

from comfyflow import logs
from comfyflow.core.runtime import Runtime
from comfyflow.embedded import ServiceURLs
from comfyflow.models import Txt2ImgRequest
from comfyflow.plugins.comfyui.templates import build_graph
from comfyflow.settings import Settings
from comfyflow.testing.api_server import free_port

REDIS_URL = ""  # set by main(): a private redis-server, or COMFYFLOW_BENCH_REDIS_URL
CHECKPOINT = "sd15-fake.safetensors"
WARMUP = 8


def request(i: int) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt=f"a red fox, take {i}", width=512, height=512, steps=20, seed=i, model=CHECKPOINT)


def start_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    """A private Redis server (its INFO cpu then counts only this benchmark), unless COMFYFLOW_BENCH_REDIS_URL."""
    if os.environ.get("COMFYFLOW_BENCH_REDIS_URL"):
        return os.environ["COMFYFLOW_BENCH_REDIS_URL"], None
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"redis://127.0.0.1:{port}/0", proc


# --- CPU accounting ---------------------------------------------------------------------------------------------
@dataclass
class Meters:
    """CPU seconds of the processes a mode involves, read before and after a run."""

    redis: Redis
    prefect_pids: list[int] = field(default_factory=list)

    async def read(self) -> dict[str, float]:
        info = await self.redis.info("cpu")
        out = {
            "process": time.process_time(),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        }
        if self.prefect_pids:
            out["prefect"] = _tree_cpu(self.prefect_pids)
            out["postgres"] = _postgres()
        return out


_PG_SEEN: dict[int, float] = {}


def _postgres() -> float:
    """CPU of the PostgreSQL backends serving this run's Prefect database (named after this process's pid), those
    that ended included (``pg_sampler`` remembers each one's last reading)."""
    mine = f"comfyflow_test_prefect_{os.getpid()}_"
    for p in psutil.process_iter(["cmdline"]):
        if mine in " ".join(p.info["cmdline"] or ()):
            _PG_SEEN[p.pid] = max(_PG_SEEN.get(p.pid, 0.0), _cpu(p))
    return sum(_PG_SEEN.values())


async def pg_sampler() -> None:
    while True:
        await asyncio.to_thread(_postgres)
        await asyncio.sleep(0.25)


def _tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            total += sum(_cpu(p) for p in [root, *root.children(recursive=True)])
    return total


@dataclass
class Result:
    mode: str
    concurrency: int
    latencies: list[float]
    wall: float
    cpu: dict[str, float]

    @property
    def jobs(self) -> int:
        return len(self.latencies)

    def pct(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1] if len(self.latencies) > 1 else 0.0

    def cpu_per_job(self) -> float:
        return sum(self.cpu.values()) / self.jobs


async def closed_loop(
    one: Callable[[int], Awaitable[None]], n: int, concurrency: int, meters: Meters, mode: str, offset: int
) -> Result:
    """``concurrency`` clients, each running its next job when the previous one finished."""
    latencies: list[float] = []
    counter = iter(range(offset, offset + n))

    async def client() -> None:
        for i in counter:
            started = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - started)

    before = await meters.read()
    wall = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    after = await meters.read()
    return Result(mode, concurrency, latencies, wall, {k: after[k] - before[k] for k in after})


# --- the bare client --------------------------------------------------------------------------------------------
async def bare_job(http: aiohttp.ClientSession, base: str, i: int) -> None:
    graph = build_graph(request(i), seed=i, model=CHECKPOINT, filename_prefix=f"bench/{i}")
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    async with http.ws_connect(f"{base}/ws", params={"clientId": client_id}) as ws:
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        async with http.post(f"{base}/prompt", json=body) as r:
            assert r.status == 200, await r.text()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            data = frame.get("data") or {}
            if frame.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
    async with http.get(f"{base}/history/{prompt_id}") as r:
        entry = (await r.json())[prompt_id]
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            params = {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
            async with http.get(f"{base}/view", params=params) as r:
                assert r.status == 200 and len(await r.read()) > 0


async def run_bare(base: str, n: int, concurrency: int, meters: Meters) -> Result:
    async with aiohttp.ClientSession() as http:
        for i in range(WARMUP):
            await bare_job(http, base, 10_000_000 + i)
        return await closed_loop(lambda i: bare_job(http, base, i), n, concurrency, meters, "bare", 0)


# --- comfyflow --------------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def comfyflow_worker(base: str, home: Path, concurrency: int, prefect_url: str | None) -> AsyncIterator[Runtime]:
    settings = Settings(
        home=home, redis_url=REDIS_URL, key_prefix=f"bench{uuid.uuid4().hex[:8]}", backends=[base],
        prefect_enabled=prefect_url is not None, prefect_api_url=prefect_url, worker_concurrency=concurrency,
        backend_slots=max(2, concurrency),  # as many prompts at once on ComfyUI as the bare client sends
        log_level="WARNING", backend_probe_seconds=5.0,
    )  # fmt: skip
    rt = await Runtime.open(settings, REDIS_URL)
    stop = asyncio.Event()
    from comfyflow.service import worker_loop

    task = asyncio.create_task(worker_loop(rt, ServiceURLs(REDIS_URL, prefect_url), stop, concurrency=concurrency))
    try:
        yield rt
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        keys = [k async for k in rt.redis.scan_iter(match=f"{settings.key_prefix}:*", count=1000)]
        if keys:
            await rt.redis.delete(*keys)
        await rt.aclose()


async def comfyflow_job(rt: Runtime, i: int) -> None:
    job = (await rt.store.submit(request(i))).job
    assert job is not None
    after = "0-0"
    while True:
        for ev in await rt.events.read(job.job_id, after, block_ms=5000):
            after = ev.id
            if ev.type == "done":
                assert ev.data.get("status") == "succeeded", (await rt.store.get(job.job_id)).error  # type: ignore[union-attr]
                return


async def run_comfyflow(
    mode: str, base: str, n: int, concurrency: int, meters: Meters, prefect_url: str | None, offset: int
) -> Result:
    home = Path(tempfile.mkdtemp(prefix="bench-core-"))
    try:
        async with comfyflow_worker(base, home, concurrency, prefect_url) as rt:
            for i in range(WARMUP):
                await comfyflow_job(rt, 20_000_000 + offset + i)
            return await closed_loop(lambda i: comfyflow_job(rt, i), n, concurrency, meters, mode, offset)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- report -----------------------------------------------------------------------------------------------------
def report(results: list[Result]) -> None:
    base = {r.concurrency: r for r in results if r.mode == "bare"}
    print(f"\n{'mode':<8} {'conc':>4} {'jobs':>5} {'jobs/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p50 x':>6} {'p95 x':>6} "
          f"{'CPU ms/job':>10} {'CPU x':>6}  CPU split ms/job")  # fmt: skip
    for r in results:
        b = base[r.concurrency]
        split = ", ".join(f"{k} {1000 * v / r.jobs:.1f}" for k, v in r.cpu.items())
        print(
            f"{r.mode:<8} {r.concurrency:>4} {r.jobs:>5} {r.jobs / r.wall:>7.1f} {1000 * r.pct(50):>8.1f} "
            f"{1000 * r.pct(95):>8.1f} {r.pct(50) / b.pct(50):>6.1f} {r.pct(95) / b.pct(95):>6.1f} "
            f"{1000 * r.cpu_per_job():>10.1f} {r.cpu_per_job() / b.cpu_per_job():>6.1f}  {split}"
        )
    for c in sorted(base):
        plain = next((r for r in results if r.mode == "plain" and r.concurrency == c), None)
        pre = next((r for r in results if r.mode == "prefect" and r.concurrency == c), None)
        if plain and pre:
            cpu_share = 1 - plain.cpu_per_job() / pre.cpu_per_job()
            lat_share = 1 - plain.pct(50) / pre.pct(50)
            print(f"Prefect's share at concurrency {c}: {100 * cpu_share:.0f} % of CPU per job, "
                  f"{100 * lat_share:.0f} % of p50 latency")  # fmt: skip


def _spawn_fake(port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "comfyflow.testing.fake_comfyui", "--port", str(port), "--render-time", "0"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main(args: argparse.Namespace) -> None:
    global REDIS_URL
    REDIS_URL, redis_proc = start_redis()
    try:
        await asyncio.sleep(0.3)
        await run_all(args)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()


async def run_all(args: argparse.Namespace) -> None:
    logs.configure("WARNING", "console")
    port = free_port()
    fake = _spawn_fake(port)
    base = f"http://127.0.0.1:{port}"
    redis = Redis.from_url(REDIS_URL)
    results: list[Result] = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                async with aiohttp.ClientSession() as s, s.get(f"{base}/system_stats") as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.1)
        meters = Meters(redis)
        levels = [1, args.concurrency]
        for c in levels:
            n = args.jobs if c > 1 else max(20, args.jobs // 2)
            results.append(await run_bare(base, n, c, meters))
            results.append(await run_comfyflow("plain", base, n, c, meters, None, 1_000_000 * c))
            print(f"done: bare and plain at concurrency {c}", flush=True)
        if args.prefect:
            from comfyflow.testing.prefect_server import prefect_server

            with prefect_server(services=False) as prefect_url:
                me = psutil.Process()
                pids = [p.pid for p in me.children() if "prefect" in " ".join(p.cmdline())]
                meters = Meters(redis, prefect_pids=pids)
                sampler = asyncio.create_task(pg_sampler())
                for c in levels:
                    n = args.jobs if c > 1 else max(20, args.jobs // 2)
                    results.append(await run_comfyflow("prefect", base, n, c, meters, prefect_url, 5_000_000 * c))
                    print(f"done: prefect at concurrency {c}", flush=True)
                sampler.cancel()
        fake_cpu = _tree_cpu([fake.pid])
    finally:
        fake.terminate()
        fake.wait()
        await redis.aclose()
    results.sort(key=lambda r: (r.concurrency, ["bare", "plain", "prefect"].index(r.mode)))
    report(results)
    print(f"(the fake ComfyUI itself used {fake_cpu:.1f} CPU-s in all; not counted above)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-prefect", dest="prefect", action="store_false")
    asyncio.run(main(parser.parse_args()))
