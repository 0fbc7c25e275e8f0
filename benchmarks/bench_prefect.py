"""Prefect's cost per generation, seen from the client, with Prefect on against Prefect off (issue 15).

    .venv/bin/python benchmarks/bench_prefect.py [--items 200] [--render-time 0.1] [--backends 1,2,4]

For each number of backends, the same run measures both modes on the same machine, one after the other:

- ``off``: ``comfyflow serve`` with ``COMFYFLOW_PREFECT_ENABLED=false`` (the plain path),
- ``on``: ``comfyflow serve`` pointed at a Prefect server on PostgreSQL (every attempt a flow run).

Each ``serve`` process talks to ``comfyflow sim`` processes (the fake ComfyUI, ``--render-time`` per prompt), a
private Redis server, and (``on``) the Prefect server of ``comfyflow.testing.prefect_server`` with its background
services, as the embedded one runs. Figures, per mode:

- ``makespan``: a sweep of ``--items`` seeds sent as one batch over the API, from the POST to the moment the
  batch's GET says it finished (client's clock); ``ideal`` is items x render time / backends, what the GPUs need.
- ``busy``: each backend's executing time (ComfyUI's own execution_start/success timestamps from /history)
  over the makespan: the share of the GPUs' time the service kept them working.
- ``CPU ms/job``: the serve process tree + the Redis server (INFO cpu) + the Prefect server tree + the
  PostgreSQL backends of its database, over the sweep. The load generator (this process) is reported apart.
- ``first POST p50``: on an idle system, ``--latency-jobs`` single jobs one after another, from ``POST
  /api/v1/jobs`` to ComfyUI's ``create_time`` of the job's prompt (the moment ComfyUI queued it).

Ratios are ``on`` / ``off`` from the same run. Run it alone: other load on the machine distorts the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from _harness import PostgresMeter, tree_cpu

from comfyflow.core.attempt import prompt_id_for
from comfyflow.testing.api_server import free_port

BIN = Path(sys.executable).parent


@dataclass
class Figures:
    backends: int
    mode: str
    items: int
    makespan: float
    ideal: float
    busy: float
    cpu: dict[str, float]
    client_cpu: float
    first_post: list[float] = field(default_factory=list)
    #: From the batch's end until Prefect held every item's flow run in a final state with its four task runs.
    prefect_lag: float = 0.0

    def cpu_per_job(self) -> float:
        return 1000 * sum(self.cpu.values()) / self.items


# --- processes --------------------------------------------------------------------------------------------------
def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout:.0f} s")


@contextlib.contextmanager
def sims(count: int, render_time: float) -> Iterator[list[str]]:
    procs, urls = [], []
    try:
        for _ in range(count):
            port = free_port()
            argv = [str(BIN / "comfyflow"), "sim", "--port", str(port), "--render-time", str(render_time)]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            _wait(lambda url=url: httpx.get(f"{url}/system_stats", timeout=1).status_code == 200, 30, url)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


@contextlib.contextmanager
def serve(env: dict[str, str], home: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = (home / "serve.log").open("ab")
    argv = [str(BIN / "comfyflow"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is None and httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 90, "serve")
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- one mode -----------------------------------------------------------------------------------------------------
def _sweep(http: httpx.Client, items: int, offset: int) -> str:
    body = {"base": {"prompt": "a red fox in the snow", "width": 512, "height": 512, "steps": 4},
            "sweep": {"seed": list(range(offset, offset + items))}}  # fmt: skip
    r = http.post("/api/v1/batches", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["batch_id"])


def _wait_batch(http: httpx.Client, batch_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = http.get(f"/api/v1/batches/{batch_id}", params={"limit": 1}).json()
        if data["status"] not in ("queued", "running"):
            return dict(data)
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} not finished within {timeout:.0f} s")


def _job_ids(http: httpx.Client, batch_id: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        data = http.get(f"/api/v1/batches/{batch_id}", params=params).json()
        ids += [item["job_id"] for item in data["items"]]
        cursor = data.get("next_cursor")
        if not cursor:
            return ids


def _history(urls: list[str], job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each job's first-attempt prompt in ComfyUI's history: {job_id: {"backend", "created", "start", "end"}}."""
    out: dict[str, dict[str, Any]] = {}
    for url in urls:
        with httpx.Client(base_url=url, timeout=10) as h:
            for job_id in job_ids:
                if job_id in out:
                    continue
                pid = prompt_id_for(job_id, 1)
                entry = h.get(f"/history/{pid}").json().get(pid)
                if not entry:
                    continue
                stamps = {m[0]: m[1].get("timestamp") for m in entry["status"]["messages"]}
                out[job_id] = {
                    "backend": url, "created": entry["prompt"][3]["create_time"] / 1000,
                    "start": stamps["execution_start"] / 1000, "end": stamps["execution_success"] / 1000,
                }  # fmt: skip
    return out


def _busy(history: dict[str, dict[str, Any]], urls: list[str], start: float, end: float) -> float:
    covered = 0.0
    for url in urls:
        spans = sorted((h["start"], h["end"]) for h in history.values() if h["backend"] == url)
        cursor = start
        for s, e in spans:
            s, e = max(s, cursor), min(e, end)
            if e > s:
                covered += e - s
                cursor = e
    return covered / (len(urls) * (end - start))


def measure(mode: str, urls: list[str], args: argparse.Namespace, prefect: tuple[str, int, str] | None,
            redis_url: str) -> Figures:  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix=f"bench-prefect-{mode}-"))
    env = {**os.environ, "COMFYFLOW_HOME": str(home), "COMFYFLOW_REDIS_URL": redis_url,
           "COMFYFLOW_KEY_PREFIX": f"bp{uuid.uuid4().hex[:8]}", "COMFYFLOW_AUTH": "none",
           "COMFYFLOW_BACKENDS": ",".join(urls), "COMFYFLOW_BACKEND_SLOTS": str(args.slots),
           "COMFYFLOW_WORKER_CONCURRENCY": str(max(4, 4 * len(urls))),
           "COMFYFLOW_LOG_LEVEL": "WARNING", "COMFYFLOW_LIMITS__INTERNAL__BATCH_SIZE": "100000"}  # fmt: skip
    if prefect is None:
        env["COMFYFLOW_PREFECT_ENABLED"] = "false"
    else:
        env["COMFYFLOW_PREFECT_API_URL"] = prefect[0]
    pg = PostgresMeter(prefect[2] if prefect else None)
    r = redis.Redis.from_url(redis_url)
    try:
        with serve(env, home) as (base, proc), httpx.Client(base_url=base, timeout=30) as http:
            _wait_batch(http, _sweep(http, 8, 10_000_000), 120)  # warm up: imports, deployment, connections
            latencies = _first_posts(http, urls, args.latency_jobs)

            def meters() -> dict[str, float]:
                info = r.info("cpu")
                out = {"serve": tree_cpu(proc.pid), "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"])}
                if prefect is not None:
                    out["prefect"] = tree_cpu(prefect[1])
                    out["postgres"] = pg.read()
                return out

            before, client_before = meters(), time.process_time()
            started = time.time()
            batch_id = _sweep(http, args.items, 0)
            final = _wait_batch(http, batch_id, 600)
            ended = time.time()
            lag = _prefect_caught_up(prefect[0], batch_id, args.items) - ended if prefect else 0.0
            after, client_cpu = meters(), time.process_time() - client_before
            assert final["counts"].get("succeeded") == args.items, final["counts"]
            history = _history(urls, _job_ids(http, batch_id))
        ideal = args.items * args.render_time / len(urls)
        return Figures(len(urls), mode, args.items, ended - started, ideal, _busy(history, urls, started, ended),
                       {k: after[k] - before[k] for k in after}, client_cpu, latencies, lag)  # fmt: skip
    finally:
        r.close()
        shutil.rmtree(home, ignore_errors=True)


def _prefect_caught_up(api_url: str, batch_id: str, items: int, timeout: float = 300) -> float:
    """When every item's flow run is final and its task runs are recorded (CPU is read after this: records are
    written beside the jobs, so Prefect may still be working when the batch is done)."""
    runs = {"flow_runs": {"tags": {"all_": [f"label:batch:{batch_id}"]}, "state": {"type": {"any_": ["COMPLETED"]}}}}
    tasks = {"flow_runs": runs["flow_runs"], "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api_url, timeout=30) as h:
        while time.monotonic() < deadline:
            if (h.post("/flow_runs/count", json=runs).json() >= items
                    and h.post("/task_runs/count", json=tasks).json() >= 4 * items):  # fmt: skip
                return time.time()
            time.sleep(1.0)  # its own queries load the server too: rarely
    raise TimeoutError(f"Prefect did not record batch {batch_id} within {timeout:.0f} s")


def _first_posts(http: httpx.Client, urls: list[str], n: int) -> list[float]:
    out = []
    for i in range(n):
        time.sleep(0.3)  # idle system: nothing else in flight (a pause between jobs, not a synchronisation)
        sent = time.time()
        r = http.post("/api/v1/jobs", json={"prompt": "latency", "width": 512, "height": 512, "steps": 4, "seed": i})
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 60
        while http.get(f"/api/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish")
            time.sleep(0.02)
        out.append(_history(urls, [job_id])[job_id]["created"] - sent)
    return out


# --- report -------------------------------------------------------------------------------------------------------
def report(results: list[Figures]) -> None:
    print(f"\n{'backends':>8} {'mode':<4} {'items':>5} {'makespan s':>10} {'ideal s':>7} {'busy':>6} "
          f"{'CPU ms/job':>10} {'1st POST p50 ms':>15} {'loadgen CPU s':>13} {'Prefect lag s':>13}  "
          "CPU split ms/job")  # fmt: skip
    for f in results:
        split = ", ".join(f"{k} {1000 * v / f.items:.1f}" for k, v in f.cpu.items())
        print(f"{f.backends:>8} {f.mode:<4} {f.items:>5} {f.makespan:>10.2f} {f.ideal:>7.1f} {100 * f.busy:>5.1f}% "
              f"{f.cpu_per_job():>10.1f} {1000 * statistics.median(f.first_post):>15.1f} {f.client_cpu:>13.2f} "
              f"{f.prefect_lag:>13.2f}  "
              f"{split}")  # fmt: skip
    print(
        "\nPrefect on / off, same run (goals: makespan <= 1.25x; CPU/job on <= 150 ms, aim 80; 1st POST p50 <= 100 ms)"
    )
    for n in sorted({f.backends for f in results}):
        off = next(f for f in results if f.backends == n and f.mode == "off")
        on = next(f for f in results if f.backends == n and f.mode == "on")
        print(
            f"  {n} backend(s): makespan {on.makespan / off.makespan:.2f}x, CPU/job {on.cpu_per_job():.0f} ms "
            f"({on.cpu_per_job() / off.cpu_per_job():.2f}x of {off.cpu_per_job():.0f}), first POST p50 "
            f"{1000 * statistics.median(on.first_post):.0f} ms vs {1000 * statistics.median(off.first_post):.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--render-time", type=float, default=0.1)
    parser.add_argument("--backends", default="1,2,4")
    parser.add_argument("--latency-jobs", type=int, default=15)
    parser.add_argument("--modes", default="off,on")
    parser.add_argument("--slots", type=int, default=2, help="COMFYFLOW_BACKEND_SLOTS (the default is 2)")
    args = parser.parse_args()
    from comfyflow.testing.prefect_server import prefect_server

    port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
    redis_url = f"http://127.0.0.1:{port}".replace("http", "redis", 1) + "/0"
    results: list[Figures] = []
    try:
        _wait(lambda: redis.Redis.from_url(redis_url).ping(), 10, "redis")
        with prefect_server() as api_url:
            me = psutil.Process()
            server = next(p for p in me.children() if "prefect" in " ".join(p.cmdline()))
            database = server.environ()["PREFECT_API_DATABASE_CONNECTION_URL"].rsplit("/", 1)[-1]
            for n in [int(x) for x in args.backends.split(",")]:
                with sims(n, args.render_time) as urls:
                    for mode in args.modes.split(","):
                        prefect = (api_url, server.pid, database) if mode == "on" else None
                        results.append(measure(mode, urls, args, prefect, redis_url))
                        print(f"done: {n} backend(s), Prefect {mode}: {results[-1].makespan:.1f} s", flush=True)
    finally:
        redis_proc.terminate()
        redis_proc.wait()
    report(results)


if __name__ == "__main__":
    main()
