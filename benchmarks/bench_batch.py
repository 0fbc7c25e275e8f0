"""How fast comfyflow accepts a 10,000-item batch, and what it costs the orchestrator's memory.

    .venv/bin/python benchmarks/bench_batch.py [--items 10000] [--redis redis://127.0.0.1:6379/0]

Each scenario runs in a fresh Python process on its own key prefix (deleted afterwards), against a Redis server,
so its RSS numbers start from the same place:

  api         POST /api/v1/batches with a 100 x 100 sweep to a live API (the whole request: validation,
              expansion, one Lua script), measured from the client
  api-items   the same with the 10,000 requests listed in the body (~1 MB of JSON)
  batch       the same in-process: expand + validate (pydantic) and BatchStore.create, timed separately
  submits     baseline: N single Submitter.submit calls (one script and round trip per job)
  pipelined   baseline: a bare pipelined HSET + XADD per item, 1,000 commands per round trip (no validation,
              no quota, no events, not atomic: the floor for writing N jobs to Redis from Python)

  idle        baseline: nothing written for 2 s; its PING figures are the machine's own noise in the same run

For each: wall time, RSS before/after and the peak (ru_maxrss) of the process, Redis memory added, and the
longest (and p99) a concurrent PING waited, from a separate process (how long Redis was blocked). Goal (issue 13):
the 10,000-item batch accepted in < 1 s with no PING waiting > 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sweep_body(items: int) -> dict[str, Any]:
    side = int(items**0.5)
    assert side * side == items, "--items must be a square (a side x side sweep of prompts and seeds)"
    return {
        "name": "bench",
        "priority": "low",
        "base": {"prompt": "x", "steps": 20, "width": 512, "height": 512},
        "sweep": {"prompt": [f"a red fox, variant {i}" for i in range(side)], "seed": list(range(side))},
    }


PING_LOOP = """
import json, sys, time
from redis import Redis
r = Redis.from_url(sys.argv[1])
r.ping()
print("ready", flush=True)
worst, waits = 0.0, []
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    t = time.perf_counter()
    r.ping()
    waits.append(time.perf_counter() - t)
    time.sleep(0.001)
    if sys.stdin in __import__("select").select([sys.stdin], [], [], 0)[0]:
        break
waits.sort()
print(json.dumps({"max": waits[-1], "p99": waits[int(0.99 * (len(waits) - 1))], "n": len(waits)}), flush=True)
"""


class PingWatch:
    """The longest a PING waited, from a process of its own (so it measures Redis, not this process's GIL or loop):
    a PING every millisecond on its own connection while the scenario runs."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PING_LOOP, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def done(self) -> dict[str, float]:
        out, _ = self.proc.communicate("stop\n", timeout=30)
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def cleanup(url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    async with Redis.from_url(url) as r:
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=5000)]
        for i in range(0, len(keys), 5000):
            await r.delete(*keys[i : i + 5000])


async def redis_used(url: str) -> int:
    from redis.asyncio import Redis

    async with Redis.from_url(url) as r:
        return int((await r.info("memory"))["used_memory"])


async def scenario(name: str, items: int, url: str) -> dict[str, Any]:
    from comfyflow.core.batches import BatchRequest, BatchStore, expand
    from comfyflow.core.runtime import Runtime
    from comfyflow.core.submission import Submitter
    from comfyflow.settings import Settings

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    settings = Settings(
        home=home, key_prefix=prefix, redis_url=url, prefect_enabled=False, auth="none",
        max_queue_depth=10 * items, max_batch_items=items, max_batch_backlog=10 * items,
    )  # fmt: skip
    body = sweep_body(items)
    out: dict[str, Any] = {"scenario": name, "items": items}
    rt = await Runtime.open(settings, url)
    try:
        redis_before = await redis_used(url)
        watcher = PingWatch(url)
        await asyncio.sleep(0.05)
        out["rss_before_mb"] = rss_mb()
        started = time.perf_counter()
        if name == "api-items":
            body = {
                "name": "bench",
                "priority": "low",
                "items": [{**body["base"], "prompt": f"a red fox, variant {i}", "seed": i} for i in range(items)],
            }
        if name in ("api", "api-items"):
            import aiohttp

            from comfyflow.api.app import create_app
            from comfyflow.testing.api_server import serve_app

            async with serve_app(create_app(settings)) as base, aiohttp.ClientSession() as http:
                out["rss_before_mb"] = rss_mb()  # the API is up: measure the request alone
                started = time.perf_counter()
                async with http.post(f"{base}/api/v1/batches", json=body) as r:
                    assert r.status == 202, await r.text()
                    batch = await r.json()
                out["seconds"] = time.perf_counter() - started
                out["rss_after_mb"] = rss_mb()
                assert batch["total"] == items
        elif name == "batch":
            bid = uuid.uuid4().hex
            requests = expand(BatchRequest.model_validate(body), batch_id=bid, max_items=items)
            out["validate_seconds"] = time.perf_counter() - started
            t = time.perf_counter()
            created = await BatchStore(rt.store).create(requests, owner="bench", batch_id=bid)
            out["create_seconds"] = time.perf_counter() - t
            out["seconds"] = time.perf_counter() - started
            out["rss_after_mb"] = rss_mb()
            assert created.outcome == "ok"
        elif name == "submits":
            requests = expand(BatchRequest.model_validate(body), batch_id=uuid.uuid4().hex, max_items=items)
            out["validate_seconds"] = time.perf_counter() - started
            t = time.perf_counter()
            sub = Submitter(rt)
            for req in requests:
                await sub.submit(req, owner="bench")
            out["create_seconds"] = time.perf_counter() - t
            out["seconds"] = time.perf_counter() - started
            out["rss_after_mb"] = rss_mb()
        elif name == "pipelined":
            pipe = rt.redis.pipeline(transaction=False)
            keys = rt.store.keys
            payload = json.dumps(body["base"])
            for i in range(items):
                jid = uuid.uuid4().hex
                pipe.hset(keys.job(jid), mapping={"id": jid, "state": "queued", "request": payload, "attempt": 1})
                pipe.xadd(keys.queue("low"), {"job": jid, "attempt": "1"})
                if i % 500 == 499:
                    await pipe.execute()
            await pipe.execute()
            out["seconds"] = time.perf_counter() - started
            out["rss_after_mb"] = rss_mb()
        elif name == "idle":  # the same PING loop with nothing else written: the machine's own noise
            await asyncio.sleep(2.0)
            out["seconds"] = 2.0
            out["rss_after_mb"] = rss_mb()
        pings = watcher.done()
        out["max_ping_ms"] = round(pings["max"] * 1000, 1)
        out["p99_ping_ms"] = round(pings["p99"] * 1000, 1)
        out["peak_rss_mb"] = peak_mb()
        out["redis_added_mb"] = round((await redis_used(url) - redis_before) / 2**20, 1)
    finally:
        await cleanup(url, prefix)
        await rt.aclose()
        shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--redis", default=os.environ.get("COMFYFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", default=["idle", "api", "api-items", "batch", "submits", "pipelined"])
    args = parser.parse_args()
    if args.scenario:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
        print(json.dumps(asyncio.run(scenario(args.scenario, args.items, args.redis))))
        return
    rows = []
    for name in args.only:
        done = subprocess.run(
            [sys.executable, __file__, "--scenario", name, "--items", str(args.items), "--redis", args.redis],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = f"{'scenario':<10} {'items':>6} {'seconds':>8} {'items/s':>8} {'RSS +MB':>8} {'peak MB':>8} " \
             f"{'Redis +MB':>9} {'max PING ms':>11} {'p99 PING ms':>11}  detail"  # fmt: skip
    print(header)
    for r in rows:
        detail = ""
        if "validate_seconds" in r:
            detail = f"validate {r['validate_seconds']:.2f}s + write {r['create_seconds']:.2f}s"
        print(
            f"{r['scenario']:<10} {r['items']:>6} {r['seconds']:>8.2f} {r['items'] / r['seconds']:>8.0f} "
            f"{r['rss_after_mb'] - r['rss_before_mb']:>8.1f} {r['peak_rss_mb']:>8.1f} {r['redis_added_mb']:>9.1f} "
            f"{r['max_ping_ms']:>11.1f} {r['p99_ping_ms']:>11.1f}  {detail}"
        )
    with contextlib.suppress(Exception):
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
