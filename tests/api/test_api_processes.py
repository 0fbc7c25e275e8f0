"""``comfyflow serve --api-processes N``: N Sanic worker processes on one port, one banner and one bootstrapped key,
every process answering with the shared state in Redis, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from redis.asyncio import Redis

from comfyflow.cli_banner import KEY_FILE
from comfyflow.testing.api_server import free_port
from tests.conftest import SERVER_REDIS


async def test_two_api_processes_serve_one_port(tmp_path: Path, prefix: str, http: aiohttp.ClientSession) -> None:
    port = free_port()
    env = {
        **os.environ, "COMFYFLOW_HOME": str(tmp_path / "home"), "COMFYFLOW_REDIS_URL": SERVER_REDIS,
        "COMFYFLOW_KEY_PREFIX": prefix, "COMFYFLOW_PREFECT_ENABLED": "false", "COMFYFLOW_AUTH": "apikey",
    }  # fmt: skip
    out = tmp_path / "serve.out"
    cmd = [sys.executable, "-m", "comfyflow.cli", "serve", "--api-processes", "2", "--workers", "0",
           "--port", str(port)]  # fmt: skip
    with out.open("w") as sink:
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once; waited for by polling below)
            cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "API processes: 2" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            await asyncio.sleep(0.2)
        while out.read_text().count("Worker ready") < 2:  # both API processes up (a stop while one still boots
            assert proc.poll() is None, out.read_text()  # is Sanic's to handle, not what this test is about)
            assert time.monotonic() < deadline, out.read_text()
            await asyncio.sleep(0.2)
        text = out.read_text()
        assert text.count("comfyflow API on") == 1, text
        assert "cf_live_" not in text, "the first key never goes to a non-terminal stdout"
        key_file = tmp_path / "home" / KEY_FILE  # stdout is not a terminal here: the key is in a 0600 file
        for _ in range(100):
            if key_file.exists():
                break
            await asyncio.sleep(0.1)
        key = re.search(r"cf_live_[A-Za-z0-9_]+", key_file.read_text()).group(0)  # type: ignore[union-attr]
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "serve" in " ".join(p.cmdline())]
        assert len(workers) >= 2, [p.cmdline() for p in workers]

        headers = {"Authorization": f"Bearer {key}"}
        ids = []
        for i in range(12):
            body = {"prompt": f"fox {i}", "width": 64, "height": 64, "steps": 2}
            async with http.post(f"{base}/api/v1/jobs", json=body, headers=headers) as r:
                assert r.status == 202, await r.text()
                ids.append((await r.json())["job_id"])
        for job_id in ids:  # whichever process answers, it reads the same Redis
            async with http.get(f"{base}/api/v1/jobs/{job_id}", headers=headers) as r:
                assert r.status == 200 and (await r.json())["status"] == "queued"
    finally:
        if proc.poll() is None:  # to the main process only, as a supervisor does: it stops its API processes
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        redis: Any = Redis.from_url(SERVER_REDIS)
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    assert proc.returncode == 0, out.read_text()[-3000:]
    try:
        os.killpg(proc.pid, 0)
        leftover = True
    except ProcessLookupError:
        leftover = False
    assert not leftover, "a worker process outlived the server"
