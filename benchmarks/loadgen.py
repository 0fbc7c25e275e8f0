"""An open-loop HTTP load generator: requests are sent on a fixed schedule (``--rate`` per second), not as fast as
answers come back, and each latency is measured from the request's scheduled time (no coordinated omission).

    .venv/bin/python benchmarks/loadgen.py --url URL --rate 500 --seconds 10 [--method POST] [--header 'K: V']
        [--body JSON] [--unique-header Idempotency-Key] [--expect 202]

Prints one JSON line: sent, errors, achieved rate, latency p50/p90/p99/max (ms), and this process's own CPU
seconds (so a report can show the generator was not the bottleneck). Runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid

import aiohttp


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run(args: argparse.Namespace) -> dict[str, float]:
    headers = dict(h.split(": ", 1) for h in args.header)
    body = args.body.encode() if args.body else None
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    total = int(args.rate * args.seconds)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(scheduled: float, i: int) -> None:
            nonlocal errors
            h = headers
            if args.unique_header:
                h = {**headers, args.unique_header: f"{uuid.uuid4().hex}-{i}"}
            try:
                async with http.request(args.method, args.url, data=body, headers=h) as r:
                    await r.read()
                    if r.status != args.expect:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)

        cpu0 = _cpu()
        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(total):
            scheduled = start + i / args.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled, i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = _cpu() - cpu0
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "sent": total, "errors": errors, "rate": total / elapsed, "p50_ms": pct(0.5), "p90_ms": pct(0.9),
        "p99_ms": pct(0.99), "max_ms": ordered[-1] * 1000, "cpu_seconds": cpu, "seconds": elapsed,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--body")
    p.add_argument("--unique-header", help="a header given a fresh value per request (e.g. Idempotency-Key)")
    p.add_argument("--expect", type=int, default=200)
    p.add_argument("--connections", type=int, default=256)
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        print(json.dumps(asyncio.run(run(args))))
    else:
        print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
