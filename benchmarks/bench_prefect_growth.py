"""Is the Prefect server as responsive after a 10,000-item batch as before it? (issue 15)

    .venv/bin/python benchmarks/bench_prefect_growth.py [--items 10000] [--generators 2] [--concurrency 8]

One Prefect server as comfyflow runs it (``comfyflow.testing.prefect_server``: services on, batched event writes,
nice 10) on a fresh copy of the migrated database. The batch is comfyflow's real record writer without rendering
(the load generators of ``bench_prefect_replicas.py``: per item a flow run created from the ``generate``
deployment, four task runs as events, the backend tag, the final state, two artifacts). Before the batch (after a
warm-up) and once the server has recorded all of it, the same probes are timed: what the Prefect UI asks when a
person opens the runs page, a run, its task runs, filters by tag, plus the health check. The ratios after/before
are from the same run; the server's CPU per item is printed too.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

import httpx
import psutil
from _harness import tree_cpu

from comfyflow.testing.prefect_server import prefect_server

REPEATS = 25


def probes(api: str) -> dict[str, list[float]]:
    """Each probe's latencies (s), REPEATS times, in a fixed order."""
    with httpx.Client(base_url=api, timeout=60) as h:
        recent = h.post("/flow_runs/filter", json={"limit": 50, "sort": "START_TIME_DESC"}).json()
        ids = [r["id"] for r in recent] or [None]
        calls = {
            "health": lambda: h.get("/health"),
            "runs page (25 newest)": lambda: h.post("/flow_runs/filter", json={"limit": 25, "sort": "START_TIME_DESC"}),
            "runs count": lambda: h.post("/flow_runs/count", json={}),
            "one run": lambda: h.get(f"/flow_runs/{random.choice(ids)}"),
            "its task runs": lambda: h.post(
                "/task_runs/filter", json={"flow_runs": {"id": {"any_": [random.choice(ids)]}}}
            ),
            "runs by tag": lambda: h.post(
                "/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["backend:bench"]}}, "limit": 25}
            ),
            "run history (UI chart)": lambda: h.post(
                "/flow_runs/history",
                json={
                    "history_start": "2020-01-01T00:00:00Z",
                    "history_end": "2100-01-01T00:00:00Z",
                    "history_interval_seconds": 86400 * 365,
                },
            ),
        }
        out: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(REPEATS):
            for name, call in calls.items():
                t = time.perf_counter()
                r = call()
                out[name].append(time.perf_counter() - t)
                assert r.status_code < 300, (name, r.status_code, r.text[:200])
        return out


def completed(api: str, kind: str) -> int:
    body = {kind: {"state": {"type": {"any_": ["COMPLETED"]}}}}
    return int(httpx.post(f"{api}/{kind}/count", json=body, timeout=60).json())


def run_batch(api: str, items: int, generators: int, concurrency: int) -> tuple[float, int]:
    """Write ``items`` records with the replicas benchmark's generators; return (seconds until recorded, warm-up)."""
    gen_script = os.path.join(os.path.dirname(__file__), "bench_prefect_replicas.py")
    share = [items // generators + (1 if i < items % generators else 0) for i in range(generators)]
    procs = []
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    for n in share:
        argv = [sys.executable, gen_script, "--generate", str(n), "--concurrency", str(concurrency)]
        procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", "a generator did not start"
        warm = 3 * generators
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            p.stdout.readline()  # "sent <cpu>"
        total = items + warm
        deadline = time.monotonic() + 3600
        while completed(api, "flow_runs") < total or completed(api, "task_runs") < 4 * total:
            assert time.monotonic() < deadline, "the server did not record the batch within an hour"
            time.sleep(2)
        return time.perf_counter() - t0, warm
    finally:
        for p in procs:
            if p.stdin is not None and p.poll() is None:
                p.stdin.write("exit\n")
                p.stdin.flush()
        for p in procs:
            p.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with prefect_server() as api:
        server = next(p for p in psutil.Process().children() if "prefect" in " ".join(p.cmdline()))
        run_batch(api, 50, 1, 4)  # warm-up: the deployment, 50 runs in the database
        before = probes(api)
        cpu0 = tree_cpu(server.pid)
        seconds, _ = run_batch(api, args.items, args.generators, args.concurrency)
        cpu = tree_cpu(server.pid) - cpu0
        after = probes(api)
        runs = completed(api, "flow_runs")
    print(f"{args.items} items recorded in {seconds:.0f} s ({args.items / seconds:.1f}/s); Prefect server CPU "
          f"{1000 * cpu / args.items:.0f} ms/item; {runs} flow runs in the database")  # fmt: skip
    print(
        f"\n{'probe':<24} {'p50 before':>10} {'p50 after':>10} {'x':>6} {'p95 before':>10} {'p95 after':>10} {'x':>6}"
    )
    for name in before:
        b50, a50 = statistics.median(before[name]), statistics.median(after[name])
        b95, a95 = sorted(before[name])[int(0.95 * REPEATS)], sorted(after[name])[int(0.95 * REPEATS)]
        print(f"{name:<24} {1000 * b50:>9.1f}ms {1000 * a50:>9.1f}ms {a50 / b50:>6.2f} {1000 * b95:>9.1f}ms "
              f"{1000 * a95:>9.1f}ms {a95 / b95:>6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
