"""Is the Prefect server as responsive after a 10,000-item batch as before it? (issue 15)

    .venv/bin/python benchmarks/bench_prefect_growth.py [--items 10000] [--generators 2] [--concurrency 8]

Two Prefect servers as comfyflow runs them (``comfyflow.testing.prefect_server``: services on, batched event
writes, nice 10), each on a fresh copy of the migrated database, both warmed up with 50 runs. One then takes the
batch: comfyflow's real record writer without rendering (the load generators of ``bench_prefect_replicas.py``: per
item a flow run created from the ``generate`` deployment, four task runs as events, the backend tag, the final
state, two artifacts). The other is the control. The probes (what the Prefect UI asks when a person opens the runs
page, a run, its task runs, filters by tag, the history chart, plus the health check) go to both servers
interleaved call by call, so whatever else the machine does weighs on both alike: before the batch, right after
the server recorded it, once the server is idle again, and after the batch's runs were deleted the way comfyflow's
retention deletes them. Printed: batch server / control server per probe (p50, p95), the server's CPU per item,
the database's size and largest tables.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
from _harness import tree_cpu

from comfyflow.testing.prefect_server import prefect_server

REPEATS = 25


def probes(apis: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """Each probe's latencies (s) on each server, REPEATS times, the servers interleaved call by call so that
    whatever else the machine does weighs on both alike."""
    clients = {name: httpx.Client(base_url=api, timeout=60) for name, api in apis.items()}
    try:
        calls: dict[str, dict[str, Any]] = {}
        for name, h in clients.items():
            recent = h.post("/flow_runs/filter", json={"limit": 50, "sort": "START_TIME_DESC"}).json()
            calls[name] = _calls(h, [r["id"] for r in recent] or [None])
        out = {name: {probe: [] for probe in calls[name]} for name in apis}
        for _ in range(REPEATS):
            for probe in calls[next(iter(apis))]:
                for name in apis:
                    t = time.perf_counter()
                    r = calls[name][probe]()
                    out[name][probe].append(time.perf_counter() - t)
                    assert r.status_code < 300, (name, probe, r.status_code, r.text[:200])
        return out
    finally:
        for h in clients.values():
            h.close()


def _calls(h: httpx.Client, ids: list[Any]) -> dict[str, Any]:
    """What the Prefect UI asks when a person opens the runs page, a run, its task runs, filters by tag."""
    return {
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


def delete_batch(api: str, since: str) -> tuple[int, float]:
    """Delete the runs started since ``since`` the way comfyflow's retention does (bulk_delete, 50 at a time)."""
    t0 = time.perf_counter()
    deleted = 0
    body = {"flow_runs": {"start_time": {"after_": since}}, "limit": 50}
    with httpx.Client(base_url=api, timeout=120) as h:
        while gone := len(h.post("/flow_runs/bulk_delete", json=body).raise_for_status().json()["deleted"]):
            deleted += gone
    return deleted, time.perf_counter() - t0


def settle(server_pid: int, quiet: float = 0.05, window: float = 5.0, limit: float = 600) -> float:
    """Wait until the server's tree uses under ``quiet`` of a core over ``window`` seconds; return seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = tree_cpu(server_pid)
        time.sleep(window)
        if (tree_cpu(server_pid) - c0) / window < quiet:
            break
    return time.monotonic() - t0


def database_of(server_pid: int) -> str:
    env = psutil.Process(server_pid).environ()
    url = next(v for k, v in env.items() if k == "PREFECT_API_DATABASE_CONNECTION_URL")
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def psql(url: str, sql: str) -> str:
    from comfyflow.embedded.postgres import postgres_bin

    argv = [str(postgres_bin() / "psql"), "-X", "-q", "-tAc", sql, url]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def table(phases: dict[str, dict[str, dict[str, list[float]]]]) -> None:
    """Per phase and probe: the batch server's p50 and p95 against the control server's in the same calls."""
    for q, label in ((0.5, "p50"), (0.95, "p95")):
        print(f"\n{label} ms: batch server / control server (x)")
        print(f"{'probe':<24}" + "".join(f" {n[:24]:>24}" for n in phases))
        for probe in next(iter(phases.values()))["control"]:
            cells = []
            for phase in phases.values():
                b, c = (sorted(phase[k][probe])[min(int(q * REPEATS), REPEATS - 1)] for k in ("batch", "control"))
                cells.append(f" {1000 * b:>7.1f} /{1000 * c:>6.1f} {b / c:>6.2f}x")
            print(f"{probe:<24}{''.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    phases: dict[str, dict[str, dict[str, list[float]]]] = {}
    with prefect_server() as control, prefect_server() as api:
        servers = [p for p in psutil.Process().children() if "prefect" in " ".join(p.cmdline())]
        server = next(p for p in servers if api.rsplit(":", 1)[1].split("/")[0] in " ".join(p.cmdline()))
        db = database_of(server.pid)
        for url in (control, api):
            run_batch(url, 50, 1, 4)  # warm-up: the deployment, 50 runs in the database
        for p in servers:
            settle(p.pid)
        apis = {"batch": api, "control": control}
        phases["before"] = probes(apis)
        cpu0 = tree_cpu(server.pid)
        batch_start = datetime.now(UTC).isoformat()
        seconds, _ = run_batch(api, args.items, args.generators, args.concurrency)
        cpu = tree_cpu(server.pid) - cpu0
        phases["right after"] = probes(apis)
        waited = settle(server.pid)
        phases[f"settled (+{waited:.0f} s)"] = probes(apis)
        rss = server.memory_info().rss + sum(c.memory_info().rss for c in server.children(recursive=True))
        size = psql(db, "SELECT pg_size_pretty(pg_database_size(current_database()))")
        stats = psql(db, "SELECT relname, n_live_tup, n_dead_tup, coalesce(last_autoanalyze::text, '-') "
                     "FROM pg_stat_user_tables ORDER BY n_live_tup DESC LIMIT 6")  # fmt: skip
        runs = completed(api, "flow_runs")
        deleted, delete_s = delete_batch(api, batch_start)
        settle(server.pid)
        phases["its runs deleted"] = probes(apis)
        size_after = psql(db, "SELECT pg_size_pretty(pg_database_size(current_database()))")
    print(f"{args.items} items recorded in {seconds:.0f} s ({args.items / seconds:.1f}/s); Prefect server CPU "
          f"{1000 * cpu / args.items:.0f} ms/item; {runs} flow runs in the database ({size}); server RSS "
          f"{rss / 2**20:.0f} MiB; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"the batch's {deleted} flow runs deleted (as comfyflow's retention does, 50 per bulk_delete) in "
          f"{delete_s:.0f} s; database {size_after} after")  # fmt: skip
    print("largest tables (rows, dead rows, last autoanalyze):\n  " + stats.replace("\n", "\n  "))
    table(phases)


if __name__ == "__main__":
    main()
