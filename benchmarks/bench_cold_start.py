"""Cold start of ``comfyflow serve --simulate`` until ``/readyz`` answers 200, on the embedded defaults.

Three cases (goals from issue 16): a fresh home (<= 12 s), a home whose services are stopped (<= 6 s), a home whose
services run (``comfyflow services start`` first; <= 1.5 s). The baseline, measured in the same run, is the
interpreter importing the API app (``python -c "import comfyflow.api.app"``): the floor of any start. Then the
phases of a cold start measured one by one in this process (Redis, PostgreSQL from nothing or from the template,
the Prefect server with and without migrations).

    .venv/bin/python benchmarks/bench_cold_start.py [--repeats 3] [--phases]

Run it with another checkout's interpreter (``/path/to/other/.venv/bin/python benchmarks/bench_cold_start.py``)
to measure that code: the commands run are ``python -m comfyflow.cli`` of the interpreter running this script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from comfyflow.testing.api_server import free_port

CLI = [sys.executable, "-m", "comfyflow.cli"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYFLOW_", "PREFECT_"))}
    env.update(
        {"COMFYFLOW_HOME": str(home), "COMFYFLOW_PREFECT_PORT": str(free_port()), "COMFYFLOW_LOG_LEVEL": "WARNING"}
    )
    return env


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def serve_until_ready(home: Path, env: dict[str, str]) -> float:
    """Seconds from starting ``serve --simulate`` until /readyz is 200; then Ctrl-C and wait for its exit."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([*CLI, "serve", "--simulate", "--port", str(port)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(home / "bench-serve.log", "ab"))  # fmt: skip
    try:
        while not _ready(f"http://127.0.0.1:{port}/readyz"):
            if proc.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError((home / "bench-serve.log").read_text()[-3000:])
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)


def baseline(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import comfyflow.api.app"], env=env, check=True)
    return time.perf_counter() - started


def cases(repeats: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"baseline (import the app)": [], "fresh home": [], "services stopped": [],
                                     "services running": []}  # fmt: skip
    for _ in range(repeats):
        home = Path(tempfile.mkdtemp(prefix="cf-bench-cold-"))
        env = _env(home)
        try:
            found["baseline (import the app)"].append(baseline(env))
            found["fresh home"].append(serve_until_ready(home, env))
            subprocess.run([*CLI, "services", "stop"], env=env, check=True, capture_output=True)  # if still running
            found["services stopped"].append(serve_until_ready(home, env))
            subprocess.run([*CLI, "services", "start"], env=env, check=True, capture_output=True)
            found["services running"].append(serve_until_ready(home, env))
        finally:
            subprocess.run([*CLI, "services", "stop"], env=env, capture_output=True)
            shutil.rmtree(home, ignore_errors=True)
    return found


def phases() -> dict[str, float]:
    from comfyflow.embedded import stop_services
    from comfyflow.embedded.postgres import ensure_postgres
    from comfyflow.embedded.prefect import ensure_prefect
    from comfyflow.embedded.redis import ensure_redis

    out: dict[str, float] = {}
    home = Path(tempfile.mkdtemp(prefix="cf-bench-phases-"))
    port = free_port()

    def timed(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - started

    try:
        timed("redis: start", lambda: ensure_redis(home))
        timed("postgres: new cluster + start + database", lambda: ensure_postgres(home))
        timed("prefect: first start (database prepared + server)", lambda: ensure_prefect(home, port))
        timed("prefect: already running", lambda: ensure_prefect(home, port))
        timed("stop all", lambda: stop_services(home))
        timed("postgres: start (cluster exists)", lambda: ensure_postgres(home))
        timed("prefect: start (database migrated)", lambda: ensure_prefect(home, port))
    finally:
        stop_services(home)
        shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phases", action="store_true", help="also time each phase in this process")
    args = parser.parse_args()
    found = cases(args.repeats)
    base = statistics.median(found["baseline (import the app)"])
    print(f"{'case':<28} {'median s':>9} {'min s':>7} {'max s':>7} {'x baseline':>10}")
    for name, values in found.items():
        med = statistics.median(values)
        print(f"{name:<28} {med:9.2f} {min(values):7.2f} {max(values):7.2f} {med / base:10.1f}")
    if args.phases:
        for name, seconds in phases().items():
            print(f"  {name:<52} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
