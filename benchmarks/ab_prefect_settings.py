"""Which Prefect server settings make comfyflow's records cheaper? Two servers side by side (A: as comfyflow runs
it, B: the same plus the settings given), fed the same records at the same time, so the machine's other load
weighs on both alike.

    .venv/bin/python benchmarks/ab_prefect_settings.py --items 1000 NAME=VALUE [NAME=VALUE ...]
    .venv/bin/python benchmarks/ab_prefect_settings.py --items 1000 --a-plain-prefect

With ``--a-plain-prefect`` server A runs Prefect's own ``prefect`` script instead of ``comfyflow-prefect`` (whose
server binds timestamps as stdlib datetimes, ``comfyflow/embedded/prefect_main.py``).

Prints per server: seconds until recorded, the server tree's CPU and its PostgreSQL backends' CPU per item, and the
database sessions opened (connection churn).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from pathlib import Path
from unittest import mock

import psutil
from _harness import PostgresMeter, tree_cpu
from bench_prefect_growth import database_of, psql, run_batch, settle

import comfyflow.testing.prefect_server as prefect_server_module
from comfyflow.testing.prefect_server import prefect_server

PREFECT_SCRIPT = str(Path(sys.executable).with_name("prefect"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--a-plain-prefect", action="store_true", help="server A runs the `prefect` script")
    parser.add_argument("settings", nargs="*", help="NAME=VALUE for server B")
    args = parser.parse_args()
    extra = dict(s.split("=", 1) for s in args.settings)
    with contextlib.ExitStack() as stack:
        if args.a_plain_prefect:
            with mock.patch.object(prefect_server_module, "prefect_executable", lambda: [PREFECT_SCRIPT]):
                urls = {"A": stack.enter_context(prefect_server())}
        else:
            urls = {"A": stack.enter_context(prefect_server())}
        os.environ.update(extra)
        try:
            urls["B"] = stack.enter_context(prefect_server())
        finally:
            for name in extra:
                os.environ.pop(name)
        procs = [p for p in psutil.Process().children() if "prefect" in " ".join(p.cmdline())]
        pid = {k: next(p.pid for p in procs if u.rsplit(":", 1)[1].split("/")[0] in " ".join(p.cmdline()))
               for k, u in urls.items()}  # fmt: skip
        db = {k: database_of(p) for k, p in pid.items()}
        for url in urls.values():
            run_batch(url, 50, 1, 4)
        for p in pid.values():
            settle(p)
        meters = {k: PostgresMeter(d.rsplit("/", 1)[1]) for k, d in db.items()}
        sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        before = {k: (tree_cpu(pid[k]), meters[k].read(), int(psql(db[k], sessions))) for k in urls}
        out: dict[str, float] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                for m in meters.values():
                    m.read()

        def feed(k: str) -> None:
            out[k] = run_batch(urls[k], args.items, args.generators, args.concurrency)[0]

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=feed, args=(k,)) for k in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        sampler.join()
        after = {k: (tree_cpu(pid[k]), meters[k].read(), int(psql(db[k], sessions))) for k in urls}
    launcher = "prefect" if args.a_plain_prefect else "comfyflow-prefect"
    print(f"A: {launcher}; B: comfyflow-prefect with {extra}; {args.items} items each, fed at once; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for k in urls:
        server = 1000 * (after[k][0] - before[k][0]) / args.items
        pg = 1000 * (after[k][1] - before[k][1]) / args.items
        print(f"{k}: recorded in {out[k]:.0f} s; server {server:.0f} ms/item + PostgreSQL {pg:.0f} ms/item; "
              f"{after[k][2] - before[k][2]} database sessions opened")  # fmt: skip


if __name__ == "__main__":
    main()
