"""A real Prometheus server on a loopback port for tests (Debian's ``prometheus`` package; ``.ci/run`` installs
it), scraping given targets with short intervals and evaluating given rule files."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from comfyflow.testing.api_server import free_port

INSTALL_HINT = "install Prometheus: apt-get install -y prometheus (.ci/run does it)"


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; raises with how to install it."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not on PATH; {INSTALL_HINT}")
    return path


def _launch(
    workdir: Path, targets: list[str], rule_files: Sequence[Path], bearer_token: str | None, interval: str
) -> tuple[subprocess.Popen[bytes], IO[bytes], int]:
    workdir.mkdir(parents=True, exist_ok=True)
    job: dict[str, Any] = {
        "job_name": "comfyflow",
        "metrics_path": "/metrics",
        "scheme": urlsplit(targets[0]).scheme,
        "static_configs": [{"targets": [urlsplit(t).netloc for t in targets]}],
    }
    if bearer_token:
        token_file = workdir / "token"
        token_file.write_text(bearer_token)
        token_file.chmod(0o600)
        job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [job],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(workdir / "prometheus.log", "wb")  # closed by prometheus_server
    proc = subprocess.Popen(
        [
            binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle", "--log.level=warn",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, log, port


@contextlib.asynccontextmanager
async def prometheus_server(
    workdir: Path,
    targets: list[str],
    *,
    rule_files: Sequence[Path] = (),
    bearer_token: str | None = None,
    interval: str = "1s",
) -> AsyncIterator[str]:
    """Start Prometheus scraping ``targets`` (base URLs; ``/metrics`` is scraped) every ``interval``, with
    ``bearer_token`` when given; yield its base URL; stop it (SIGTERM, then SIGKILL). Its log stays in
    ``workdir/prometheus.log``."""
    proc, log, port = await asyncio.to_thread(_launch, workdir, targets, rule_files, bearer_token, interval)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{base}/-/ready", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError("prometheus did not become ready in 30 s")
                await asyncio.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        log.close()


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query: [(labels, value)]."""
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    if body.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {body}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    return [(item["metric"], float(item["value"][1])) for item in data["result"]]


async def targets_up(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/api/v1/targets") as r:
        return list((await r.json())["data"]["activeTargets"])


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
