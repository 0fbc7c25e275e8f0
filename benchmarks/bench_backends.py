"""Backend busy time with 1, 2 and 4 fake ComfyUI backends at 1 s per prompt, and orchestrator CPU per job
(issues 2 and 7). Goal: every backend busy at least 97 % of the time while jobs are waiting.

    .venv/bin/python benchmarks/bench_backends.py [--backends 1,2,4] [--jobs-per-backend 16] [--prefect]

The fakes run in one subprocess that records when each prompt starts and ends executing (it wraps the fake's
executor; nothing in the fake is changed). Two ``comfyflow worker`` processes (distributed mode: Redis server,
plain runner, or Prefect flow runs with ``--prefect``) serve a queue filled up front with enough jobs to keep
every backend busy. Busy time is the union of a backend's execution intervals over

- ``steady``: from the moment every backend had started its first prompt to the moment the first backend ran out
  of queued work (all backends had work available all along: any idle time there is the orchestrator's),
- ``own``: each backend from its first start to its last end.

Orchestrator CPU per job: the worker processes (psutil, read just before they stop) plus the Redis server (INFO
cpu), plus with ``--prefect`` the Prefect server tree and PostgreSQL. The baseline, measured in the same run, is the
CPU the fakes spent serving the same prompts (what a GPU server's own HTTP side costs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from _harness import cpu as _cpu
from redis.asyncio import Redis

from comfyflow.testing.api_server import free_port

REDIS_URL = ""  # set by main(): a private redis-server, or COMFYFLOW_BENCH_REDIS_URL
CAPACITY = 2
WORKERS = 2


def start_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    """A private Redis server (its INFO cpu then counts only this benchmark), unless COMFYFLOW_BENCH_REDIS_URL."""
    if os.environ.get("COMFYFLOW_BENCH_REDIS_URL"):
        return os.environ["COMFYFLOW_BENCH_REDIS_URL"], None
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"redis://127.0.0.1:{port}/0", proc


# --- the fakes' host process --------------------------------------------------------------------------------------
def host_fakes(count: int, render_time: float, out: Path) -> None:
    """Run ``count`` fakes; print their URLs as JSON; on SIGTERM write each one's execution intervals to ``out``."""
    from comfyflow.testing.fake_comfyui import FakeComfyUI

    async def serve() -> None:
        fakes = [FakeComfyUI(render_time=render_time) for _ in range(count)]
        intervals: dict[str, list[tuple[float, float]]] = {}
        for fake in fakes:
            await fake.start()
            spans = intervals.setdefault(fake.url, [])
            run = fake.executor.run

            async def timed(item: Any, run: Any = run, spans: list[tuple[float, float]] = spans) -> Any:
                started = time.time()
                try:
                    return await run(item)
                finally:
                    spans.append((started, time.time()))

            fake.executor.run = timed  # type: ignore[method-assign]
        print(json.dumps([f.url for f in fakes]), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        _dump(out, {"intervals": intervals, "max_in_flight": {f.url: f.max_in_flight for f in fakes}})
        for fake in fakes:
            await fake.stop()

    asyncio.run(serve())


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


def _spawn_fakes(n_backends: int, render_time: float, out: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--host-fakes", str(n_backends), "--render-time", str(render_time)]
    return subprocess.Popen([*argv, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _spawn_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        argv = [sys.executable, "-m", "comfyflow.cli", "worker", "--concurrency", str(concurrency)]
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)


# --- measuring ------------------------------------------------------------------------------------------------------
def _tree(proc: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        return _cpu(proc) + sum(_cpu(c) for c in proc.children(recursive=True))
    return 0.0


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


def busy(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Fraction of [start, end] covered by the union of ``spans``."""
    covered, cursor = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, cursor), min(b, end)
        if b > a:
            covered += b - a
            cursor = b
    return covered / (end - start) if end > start else 0.0


async def run_config(
    n_backends: int, jobs: int, render_time: float, prefect_url: str | None, prefect_procs: list[psutil.Process]
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    out = work / "intervals.json"
    host = _spawn_fakes(n_backends, render_time, out)
    assert host.stdout is not None
    urls: list[str] = json.loads(host.stdout.readline())
    prefix = f"benchb{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYFLOW_")}
    env.update(
        COMFYFLOW_HOME=str(work / "home"), COMFYFLOW_REDIS_URL=REDIS_URL, COMFYFLOW_KEY_PREFIX=prefix,
        COMFYFLOW_BACKENDS=",".join(urls), COMFYFLOW_BACKEND_SLOTS=str(CAPACITY),
        COMFYFLOW_PREFECT_ENABLED="true" if prefect_url else "false", COMFYFLOW_PREFECT_API_URL=prefect_url or "",
        COMFYFLOW_LOG_LEVEL="WARNING", COMFYFLOW_AUTH="none", COMFYFLOW_STORAGE_URL=(work / "artifacts").as_uri(),
        PREFECT_LOGGING_LEVEL="WARNING", PREFECT_LOGGING_TO_API_ENABLED="false", DO_NOT_TRACK="1",
    )  # fmt: skip
    concurrency = max(4, CAPACITY * n_backends)  # each worker alone could fill every slot: jobs always wait
    workers = [_spawn_worker(env, concurrency, work / f"worker{i}.log") for i in range(WORKERS)]
    from comfyflow.core.store import JobStore
    from comfyflow.models import Txt2ImgRequest
    from comfyflow.settings import Settings

    redis = Redis.from_url(REDIS_URL)
    store = JobStore(redis, Settings(redis_url=REDIS_URL, key_prefix=prefix, backends=urls))
    await store.ensure_groups()
    await asyncio.sleep(4.0 if prefect_url else 2.0)  # workers up (imports, deployment) before the clock starts
    procs = [psutil.Process(w.pid) for w in workers]
    cpu_before = sum(_tree(p) for p in procs)
    fakes_before = _tree(psutil.Process(host.pid))
    redis_before = await _redis_cpu(redis)
    pg_before = _postgres() if prefect_url else 0.0
    prefect_before = sum(_tree(p) for p in prefect_procs)
    submitted = time.time()
    ids = []
    for i in range(jobs):
        req = Txt2ImgRequest(prompt=f"fox {i}", width=512, height=512, steps=20, seed=i)
        ids.append((await store.submit(req)).job.job_id)  # type: ignore[union-attr]
    while True:
        pipe = redis.pipeline(transaction=False)
        for j in ids:
            pipe.hget(store.keys.job(j), "state")
        states = [s.decode() if s else "" for s in await pipe.execute()]
        if all(s in ("succeeded", "failed", "canceled") for s in states):
            break
        await asyncio.sleep(0.2)
    finished = time.time()
    cpu = sum(_tree(p) for p in procs) - cpu_before
    redis_cpu = await _redis_cpu(redis) - redis_before
    pg_cpu = (_postgres() - pg_before) if prefect_url else 0.0
    prefect_cpu = sum(_tree(p) for p in prefect_procs) - prefect_before
    failed = states.count("failed")
    fakes_cpu = _tree(psutil.Process(host.pid)) - fakes_before
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=60)
    host.send_signal(signal.SIGTERM)
    host.wait(timeout=30)
    data = json.loads(await asyncio.to_thread(out.read_text))
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    shutil.rmtree(work, ignore_errors=True)

    spans = {u: data["intervals"][u] for u in urls}
    steady_start = max(min(a for a, _ in s) for s in spans.values())
    steady_end = min(max(b for _, b in s) for s in spans.values()) - render_time  # the last prompt had no successor
    return {
        "backends": n_backends, "jobs": jobs, "failed": failed, "wall": finished - submitted,
        "steady": [busy(s, steady_start, steady_end) for s in spans.values()],
        "own": [busy(s, min(a for a, _ in s), max(b for _, b in s)) for s in spans.values()],
        "per_backend": [len(s) for s in spans.values()],
        "ideal_wall": jobs * render_time / n_backends,
        "cpu_workers": cpu / jobs, "cpu_redis": redis_cpu / jobs, "cpu_postgres": pg_cpu / jobs,
        "cpu_prefect": prefect_cpu / jobs,
        "cpu_fakes": fakes_cpu / jobs, "max_in_flight": max(data["max_in_flight"].values()),
    }  # fmt: skip


async def _redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def report(rows: list[dict[str, Any]], mode: str) -> None:
    print(f"\n{mode}: {CAPACITY} slots per backend, {WORKERS} worker processes")
    print(
        f"{'backends':>8} {'jobs':>5} {'wall s':>7} {'ideal s':>7} {'busy steady':>17} {'busy own':>17} "
        f"{'CPU ms/job':>10} {'(workers':>9} {'redis':>6} {'prefect':>7} {'pg)':>5} {'fakes ms/job':>12} "
        f"{'CPU x fakes':>11}"
    )
    for r in rows:
        cpu = r["cpu_workers"] + r["cpu_redis"] + r["cpu_prefect"] + r["cpu_postgres"]
        print(
            f"{r['backends']:>8} {r['jobs']:>5} {r['wall']:>7.1f} {r['ideal_wall']:>7.1f} "
            f"{100 * min(r['steady']):>6.2f}-{100 * max(r['steady']):>6.2f} % {100 * min(r['own']):>6.2f}-"
            f"{100 * max(r['own']):>6.2f} % {1000 * cpu:>10.1f} {1000 * r['cpu_workers']:>9.1f} "
            f"{1000 * r['cpu_redis']:>6.1f} {1000 * r['cpu_prefect']:>7.1f} {1000 * r['cpu_postgres']:>5.1f} "
            f"{1000 * r['cpu_fakes']:>12.1f} {cpu / r['cpu_fakes']:>11.1f}"
        )
        assert r["failed"] == 0 and r["max_in_flight"] <= CAPACITY, r


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
    counts = [int(c) for c in args.backends.split(",")]
    modes = ["plain", "prefect"] if args.prefect else ["plain"]
    for mode in modes:
        rows = []
        with contextlib.ExitStack() as stack:
            url, server = None, []
            if mode == "prefect":
                from comfyflow.testing.prefect_server import prefect_server

                url = stack.enter_context(prefect_server(services=False))
                server = [p for p in psutil.Process().children() if "prefect" in " ".join(p.cmdline())]
            sampler = asyncio.create_task(pg_sampler()) if url else None
            for n in counts:
                rows.append(await run_config(n, n * args.jobs_per_backend, args.render_time, url, server))
                print(f"done: {mode} with {n} backend(s)", flush=True)
            if sampler is not None:
                sampler.cancel()
        report(rows, mode)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="1,2,4")
    parser.add_argument("--jobs-per-backend", type=int, default=16)
    parser.add_argument("--render-time", type=float, default=1.0)
    parser.add_argument("--prefect", action="store_true", help="also run each attempt as a Prefect flow run")
    parser.add_argument("--host-fakes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.host_fakes:
        host_fakes(ns.host_fakes, ns.render_time, ns.out)
    else:
        asyncio.run(main(ns))
