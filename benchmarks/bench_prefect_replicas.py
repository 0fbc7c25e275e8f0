"""Prefect-limited throughput with 1 and 2 API replicas (issue 15, "When users outgrow one Prefect server").

    .venv/bin/python benchmarks/bench_prefect_replicas.py [--jobs 150] [--generators 2] [--concurrency 8]

For each shape, on a fresh copy of the migrated database (``comfyflow.testing.prefect_replicas``): N API replicas
(``prefect server start --no-services``), one ``prefect server services start``, a private Redis carrying
Prefect's events (prefect-redis). Both shapes have the services process, so the ratio isolates the replicas.

The load is comfyflow's real record writer without rendering: ``--generators`` processes each claim jobs from a
Redis queue and drive ``flows.records.AttemptRecord`` through ``flows.executor.PrefectExecutor`` with four trivial
steps (a flow run created from the deployment, four task runs sent as events over the websocket, the final state,
the job saved as succeeded in Redis as a worker does, then the job's two artifacts);
generator i talks to replica i mod N. The figure is records per second until the server caught up: from the start
signal until every flow run is Completed and every task run is recorded as Completed (read through the API).
CPU seconds are reported per process kind: API replicas, services process, PostgreSQL backends of the database,
Redis, and the load generators. Run it alone: other load on the machine distorts the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
from _harness import cpu

from comfyflow.testing.prefect_replicas import prefect_replicas
from comfyflow.testing.prefect_server import COPY_PREFIX


class Meter:
    """CPU seconds of this process's Prefect/Redis children and of PostgreSQL backends of the copied database."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], float] = {}

    def read(self) -> dict[str, float]:
        for child in psutil.Process().children(recursive=True):
            cmd = " ".join(child.cmdline()) if child.is_running() else ""
            kind = ("services" if "services start" in cmd else "api" if "server start" in cmd
                    else "redis" if "redis-server" in cmd else "")  # fmt: skip
            if kind:
                self.seen[(kind, child.pid)] = max(self.seen.get((kind, child.pid), 0.0), cpu(child))
        needle = f"{COPY_PREFIX}{os.getpid()}_"
        for p in psutil.process_iter(["cmdline"]):
            if needle in " ".join(p.info["cmdline"] or ()):
                self.seen[("postgres", p.pid)] = max(self.seen.get(("postgres", p.pid), 0.0), cpu(p))
        out: dict[str, float] = {}
        for (kind, _), value in self.seen.items():
            out[kind] = out.get(kind, 0.0) + value
        return out


def _count(api: str, what: str, body: dict[str, object]) -> int:
    return int(httpx.post(f"{api}/{what}/count", json=body, timeout=30).json())


def run_shape(replicas: int, jobs: int, generators: int, concurrency: int) -> dict[str, float]:
    with prefect_replicas(replicas) as urls:
        meter = Meter()
        procs = []
        share = [jobs // generators + (1 if i < jobs % generators else 0) for i in range(generators)]
        for i in range(generators):
            env = {**os.environ, "PREFECT_API_URL": urls[i % replicas], "PREFECT_LOGGING_LEVEL": "WARNING"}
            argv = [sys.executable, __file__, "--generate", str(share[i]), "--concurrency", str(concurrency)]
            procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:  # warmed up: deployment applied, a few records sent
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", "a generator did not start"
        warm = 3 * generators
        deadline = time.monotonic() + 120
        while _count(urls[0], "task_runs", _completed("task_runs")) < 4 * warm:
            assert time.monotonic() < deadline, "the warm-up records were not recorded"
            time.sleep(0.2)
        cpu0 = meter.read()
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        gen = [float(p.stdout.readline().split()[1]) for p in procs if p.stdout is not None]
        sent = time.perf_counter() - t0
        total = jobs + warm
        deadline = time.monotonic() + 600
        while not (_count(urls[-1], "flow_runs", _completed("flow_runs")) >= total
                   and _count(urls[-1], "task_runs", _completed("task_runs")) >= 4 * total):  # fmt: skip
            assert time.monotonic() < deadline, "the server did not catch up within 600 s"
            meter.read()
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        cpu1 = meter.read()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("exit\n")
            p.stdin.flush()
            p.wait(120)
    figures = {"records_per_s": jobs / elapsed, "seconds": elapsed, "sent_s": sent,
               "generators_cpu_s": sum(gen)}  # fmt: skip
    for kind in ("api", "services", "postgres", "redis"):
        figures[f"{kind}_cpu_s"] = cpu1.get(kind, 0.0) - cpu0.get(kind, 0.0)
    return figures


def _completed(kind: str) -> dict[str, object]:
    return {kind: {"state": {"type": {"any_": ["COMPLETED"]}}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="attempts in flight per generator")
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate is not None:
        asyncio.run(generate(args.generate, args.concurrency))
        return
    print(f"{os.cpu_count()} cores; {args.jobs} records per shape; {args.generators} generator processes x "
          f"{args.concurrency} in flight", flush=True)  # fmt: skip
    results = {}
    for replicas in (1, 2):
        results[replicas] = fig = run_shape(replicas, args.jobs, args.generators, args.concurrency)
        used = fig["api_cpu_s"] + fig["services_cpu_s"] + fig["postgres_cpu_s"] + fig["redis_cpu_s"]
        print(f"{replicas} API replica(s): {fig['records_per_s']:6.1f} records/s ({fig['seconds']:.1f} s, sent in "
              f"{fig['sent_s']:.1f} s); server CPU {1000 * used / args.jobs:.0f} ms/record = API "
              f"{fig['api_cpu_s']:.1f} s + services {fig['services_cpu_s']:.1f} s + PostgreSQL "
              f"{fig['postgres_cpu_s']:.1f} s + Redis {fig['redis_cpu_s']:.1f} s over {fig['seconds']:.1f} s "
              f"({used / fig['seconds']:.2f} cores); load generators {fig['generators_cpu_s']:.1f} s "
              f"({fig['generators_cpu_s'] / fig['seconds']:.2f} cores)", flush=True)  # fmt: skip
    print(f"ratio 2 replicas / 1 replica: {results[2]['records_per_s'] / results[1]['records_per_s']:.2f}x records/s")


async def generate(jobs: int, concurrency: int) -> None:
    """One load generator: claim jobs and write their Prefect records with four trivial steps."""
    from prefect.states import Completed

    from comfyflow.core.attempt import AttemptContext
    from comfyflow.core.queue import QueueReader
    from comfyflow.core.runtime import Runtime
    from comfyflow.models import JobResult, Txt2ImgRequest
    from comfyflow.settings import Settings
    from flows.executor import PrefectExecutor
    from flows.records import AttemptRecord

    home = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    settings = Settings(home=home, key_prefix=f"bench{uuid.uuid4().hex[:8]}", backends=["http://127.0.0.1:1"],
                        log_level="WARNING")  # fmt: skip
    rt = await Runtime.open(settings, "redis://127.0.0.1:6379/0")
    reader = QueueReader(rt.redis, rt.store.keys, "bench", rt.settings.priority_weights)
    try:
        async with PrefectExecutor() as ex:
            claiming = asyncio.Lock()  # one reader: its lanes take turns

            async def one(seed: int) -> None:
                await rt.store.submit(Txt2ImgRequest(prompt="x", seed=seed))
                async with claiming:
                    msg = None
                    while msg is None:
                        msg = await reader.next(block_ms=1000)
                claim = await rt.store.claim(msg, "bench")
                ctx = AttemptContext(rt, claim, await rt.store.get(claim.job_id), await rt.store.raw(claim.job_id))
                rec = AttemptRecord(ex, ctx)
                for name in ("validate", "acquire_slot", "render", "store"):
                    await rec.step(name, asyncio.sleep(0.005))
                    if name == "acquire_slot":
                        rec.tag("backend:bench")
                rec.finish(Completed(message="1 artifact(s) from bench"))
                await rt.store.complete(claim, JobResult(seed=seed, backend="bench"))  # as the worker saves it

            async def lane(seeds: list[int]) -> None:
                for seed in seeds:
                    await one(seed)

            await asyncio.gather(*(one(s) for s in range(3)))
            await asyncio.wait(set(ex._background), timeout=60)
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            cpu0 = time.process_time()
            seeds = list(range(100, 100 + jobs))
            await asyncio.gather(*(lane(seeds[i::concurrency]) for i in range(concurrency)))
            if ex._background:
                await asyncio.wait(set(ex._background), timeout=300)
            print(f"sent {time.process_time() - cpu0:.3f}", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # hold the websocket until the main process has counted
    finally:
        keys = [k async for k in rt.redis.scan_iter(match=f"{settings.key_prefix}:*")]
        if keys:
            await rt.redis.delete(*keys)
        await rt.aclose()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
