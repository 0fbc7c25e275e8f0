"""The API's hot paths against minimal Sanic handlers on the same Redis, in the same run (issues 3 and 13).

    .venv/bin/python benchmarks/bench_submit.py [--seconds 10] [--connections 32] [--rate 500]
        [--api-processes 1 2] [--rounds 2]

Servers, each in its own process(es), one at a time, on loopback against the same Redis server:

- ``baseline``: ``POST /submit`` does one Redis ``SET`` of the body and answers 202 with an id; ``GET /job/<id>``
  does one ``HGETALL`` and answers its fields as JSON.
- ``comfyflow``: the real API (``create_app``, no job workers) with auth on: an API key of a role with a daily
  quota and a request rate limit (both far above what the run uses, so they are enforced but never refuse), and
  an ``Idempotency-Key`` on every POST. ``--api-processes N`` serves it from N Sanic worker processes
  (``comfyflow serve --api-processes N``).

Load: closed-loop throughput with ``wrk`` (``--connections`` keep-alive connections, one thread; Debian's ``wrk``,
installed by ``scripts/system-deps``), then an open-loop run at ``--rate`` requests/s (``benchmarks/loadgen.py`` in
its own process; latency from each request's scheduled time). The load generators' own CPU is reported next to
the servers'. Goals (issue 13): POST >= 0.5x the baseline's throughput and p99 < 20 ms at 500 req/s offered; GET
>= 0.6x. Run it on a quiet machine: other load distorts absolute numbers; the ratios come from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psutil
from redis.asyncio import Redis
from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic.response import json as json_response

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("COMFYFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = {"prompt": "a red fox in the snow, golden hour", "width": 512, "height": 512, "steps": 20, "sampler": "euler"}
LIMITS = {"pro": {"requests_per_minute": 100_000_000, "daily_jobs": 100_000_000}}


# --- the servers (each run as: python bench_submit.py --serve NAME --port N --prefix P --home H) ----------------


def serve_baseline(port: int, prefix: str) -> None:
    app = Sanic("bench_baseline")

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        app.ctx.redis = Redis.from_url(REDIS_URL)

    @app.get("/ping")
    async def ping(request: Request) -> HTTPResponse:
        return json_response({"ok": True})

    @app.post("/submit")
    async def submit(request: Request) -> HTTPResponse:
        job_id = uuid.uuid4().hex
        await request.app.ctx.redis.set(f"{prefix}:baseline:{job_id}", request.body, ex=600)
        return json_response({"job_id": job_id, "status": "queued"}, status=202)

    @app.get("/job/<job_id:str>")
    async def get(request: Request, job_id: str) -> HTTPResponse:
        raw = await request.app.ctx.redis.hgetall(f"{prefix}:job:{job_id}")
        return json_response({k.decode(): v.decode() for k, v in raw.items()})

    app.run(host="127.0.0.1", port=port, single_process=True, access_log=False, motd=False)


def comfyflow_settings(prefix: str, home: str, processes: int = 1) -> Any:
    from comfyflow.settings import Settings

    extra = {"api_processes": processes} if processes > 1 else {}
    return Settings(
        home=Path(home), key_prefix=prefix, redis_url=REDIS_URL, prefect_enabled=False, auth="apikey",
        max_queue_depth=10_000_000, limits=LIMITS, **extra,  # type: ignore[arg-type]
    )  # type: ignore[call-arg]  # fmt: skip


def serve_comfyflow(port: int, prefix: str, home: str, processes: int) -> None:
    from comfyflow import logs

    settings = comfyflow_settings(prefix, home, processes)
    logs.configure(settings.log_level, "json")
    from comfyflow.api.app import create_app
    from comfyflow.api.serving import serve

    serve(create_app(settings, run_worker=False), settings, host="127.0.0.1", port=port)


# --- load -----------------------------------------------------------------------------------------------------------


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _server_cpu(pid: int) -> float:
    proc = psutil.Process(pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_lua(tmp: Path, method: str, key: str, body: dict[str, Any] | None) -> Path:
    script = tmp / f"{method.lower()}.lua"
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""]
    if body is not None:
        lines += ['wrk.headers["Content-Type"] = "application/json"', f"wrk.body = [[{json.dumps(body)}]]",
                  "local n = 0", "request = function()", "  n = n + 1",
                  '  wrk.headers["Idempotency-Key"] = "k" .. math.random(1, 2147483647) .. "-" .. n',
                  "  return wrk.format()", "end"]  # fmt: skip
    script.write_text("\n".join(lines) + "\n")
    return script


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    cpu0 = _children_cpu()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = _children_cpu() - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {q: _ms(v) for q, v in re.findall(r"\s+(50|99)%\s+(\S+)", out)}
    return {"rps": rps, "requests": total, "errors": int(bad.group(1)) if bad else 0, "p50_ms": lat["50"],
            "p99_ms": lat["99"], "gen_cpu_pct": 100 * cpu / seconds}  # fmt: skip


def run_open_loop(url: str, args: argparse.Namespace, key: str, body: dict[str, Any] | None) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", url, "--rate", str(args.rate),
           "--seconds", str(args.open_seconds), "--method", "POST" if body else "GET", "--expect",
           "202" if body else "200"]  # fmt: skip
    if key:
        cmd += ["--header", f"Authorization: Bearer {key}"]
    if body is not None:
        cmd += ["--body", json.dumps(body), "--unique-header", "Idempotency-Key"]
    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    res["gen_cpu_pct"] = 100 * res["cpu_seconds"] / res["seconds"]
    return res  # type: ignore[no-any-return]


async def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the server at {url} did not come up")


def measure(name: str, processes: int, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from comfyflow.testing.api_server import free_port

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", name, "--port", str(port), "--prefix", ctx["prefix"],
           "--home", ctx["home"], "--processes", str(processes)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    key = "" if name == "baseline" else ctx["key"]
    post_url = f"{base}/submit" if name == "baseline" else f"{base}/api/v1/jobs"
    get_url = f"{base}/job/{ctx['job_id']}" if name == "baseline" else f"{base}/api/v1/jobs/{ctx['job_id']}"
    out: dict[str, Any] = {"name": name if processes == 1 else f"{name} x{processes}"}
    try:
        asyncio.run(_wait_up(f"{base}/ping", proc))
        post_lua, get_lua = wrk_lua(ctx["tmp"], "POST", key, BODY), wrk_lua(ctx["tmp"], "GET", key, None)
        run_wrk(post_url, post_lua, 2, args.connections)  # warm-up
        for what, url, script in (("post", post_url, post_lua), ("get", get_url, get_lua)):
            cpu0 = _server_cpu(proc.pid)
            res = run_wrk(url, script, args.seconds, args.connections)
            res["server_cpu_ms"] = 1000 * (_server_cpu(proc.pid) - cpu0) / max(1, res["requests"])
            out[what] = res
        if processes == 1:
            out["open_post"] = run_open_loop(post_url, args, key, BODY)
            out["open_get"] = run_open_loop(get_url, args, key, None)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    return out


async def prepare(prefix: str, home: str) -> dict[str, Any]:
    """A user and key of role pro, and one job of theirs for the GETs."""
    from comfyflow_apikey import ApiKeyAuth

    from comfyflow.core.runtime import Runtime
    from comfyflow.models import Role, Txt2ImgRequest

    settings = comfyflow_settings(prefix, home)
    redis = Redis.from_url(REDIS_URL)
    store = ApiKeyAuth(settings, redis=redis)
    user = await store.create_user("bench", Role.PRO)
    key = (await store.create_key(user.id, "bench")).key
    rt = await Runtime.open(settings, REDIS_URL)
    job = (await rt.store.submit(Txt2ImgRequest(**BODY), owner=user.id)).job  # type: ignore[arg-type]
    await rt.aclose()
    await redis.aclose()
    assert job is not None
    return {"key": key, "job_id": job.job_id}


async def cleanup(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=5000)]
    for i in range(0, len(keys), 5000):
        await redis.delete(*keys[i : i + 5000])
    await redis.aclose()


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nclosed loop: wrk, {args.connections} connections, {args.seconds:g} s per figure, best of {args.rounds}; "
          f"open loop: {args.rate:g} req/s offered for {args.open_seconds:g} s")  # fmt: skip
    print(f"{'server':<14} {'call':<5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'srv CPU ms/req':>15} "
          f"{'gen CPU %':>10}")  # fmt: skip
    for r in rows:
        for what in ("post", "get"):
            f = r[what]
            print(f"{r['name']:<14} {what:<5} {f['rps']:>8.0f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} "
                  f"{f['errors']:>7} {f['server_cpu_ms']:>15.3f} {f['gen_cpu_pct']:>10.0f}")  # fmt: skip
    print(f"\nopen loop at {args.rate:g} req/s offered")
    print(f"{'server':<14} {'call':<5} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} "
          f"{'gen CPU %':>10}")  # fmt: skip
    for r in rows:
        for what in ("open_post", "open_get"):
            if what in r:
                f = r[what]
                print(f"{r['name']:<14} {what[5:]:<5} {f['rate']:>9.0f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} "
                      f"{f['max_ms']:>8.1f} {f['errors']:>7} {f['gen_cpu_pct']:>10.0f}")  # fmt: skip
    by = {r["name"]: r for r in rows}
    base, cf = by["baseline"], by["comfyflow"]
    post_ratio, get_ratio = cf["post"]["rps"] / base["post"]["rps"], cf["get"]["rps"] / base["get"]["rps"]
    p99 = cf["open_post"]["p99_ms"]
    print(f"\nPOST /api/v1/jobs (API key, Idempotency-Key, quota, rate limit) / baseline: x{post_ratio:.2f} "
          f"(goal >= 0.5) {'ok' if post_ratio >= 0.5 else 'MISSED'}")  # fmt: skip
    print(f"POST p99 at {args.rate:g} req/s offered: {p99:.1f} ms (goal < 20) {'ok' if p99 < 20 else 'MISSED'}")
    verdict = "ok" if get_ratio >= 0.6 else "MISSED"
    print(f"GET /api/v1/jobs/{{id}} / baseline: x{get_ratio:.2f} (goal >= 0.6) {verdict}")
    for r in rows:
        if r["name"].startswith("comfyflow x"):
            post, get = r["post"]["rps"] / cf["post"]["rps"], r["get"]["rps"] / cf["get"]["rps"]
            print(f"{r['name']}: POST x{post:.2f}, GET x{get:.2f} of one process")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")


def main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run scripts/system-deps (Debian package wrk)")
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    home = tempfile.mkdtemp(prefix="bench-submit-")
    ctx: dict[str, Any] = {"prefix": prefix, "home": home, "tmp": Path(home)}
    best: dict[str, dict[str, Any]] = {}
    try:
        ctx.update(asyncio.run(prepare(prefix, home)))
        plan = [("baseline", 1), ("comfyflow", 1)] + [("comfyflow", n) for n in args.api_processes if n > 1]
        for round_no in range(args.rounds):
            for name, processes in plan:
                r = measure(name, processes, args, ctx)
                print(f"round {round_no + 1} {r['name']:<14} POST {r['post']['rps']:7.0f} req/s  "
                      f"GET {r['get']['rps']:7.0f} req/s", flush=True)  # fmt: skip
                if r["name"] not in best or r["post"]["rps"] > best[r["name"]]["post"]["rps"]:
                    best[r["name"]] = r
    finally:
        asyncio.run(cleanup(prefix))
        shutil.rmtree(home, ignore_errors=True)
    report(list(best.values()), args)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=float, default=500, help="open loop: requests per second offered")
    p.add_argument("--open-seconds", type=float, default=10)
    p.add_argument("--api-processes", type=int, nargs="*", default=[2], help="also measure these process counts")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serve", choices=["baseline", "comfyflow"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.serve == "baseline":
        serve_baseline(arguments.port, arguments.prefix)
    elif arguments.serve == "comfyflow":
        serve_comfyflow(arguments.port, arguments.prefix, arguments.home, arguments.processes)
    else:
        main(arguments)
