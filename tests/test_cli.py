"""The README's main paths as a user runs them: `comfyflow generate --simulate` and `comfyflow serve --simulate`
on the embedded defaults (embedded Redis, embedded PostgreSQL + Prefect server), and graceful shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyflow.embedded import stop_services
from comfyflow.testing.api_server import free_port


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, pytest resets it to 0700 and the embedded PostgreSQL (unprivileged)
    # could no longer reach its data.
    path = Path(tempfile.mkdtemp(prefix="comfyflow-cli-"))
    yield path
    stop_services(path)
    shutil.rmtree(path, ignore_errors=True)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYFLOW_", "PREFECT_"))}
    env.update({"COMFYFLOW_HOME": str(home), "COMFYFLOW_PREFECT_PORT": str(free_port()), **extra})
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "comfyflow.cli", *args]


def test_generate_on_embedded_defaults_prints_artifacts(home: Path) -> None:
    proc = subprocess.run(
        _cli("generate", "a red fox", "--simulate", "--render-time", "0.2", "--width", "64", "--height", "64"),
        env=_env(home), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = [Path(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(paths) == 1 and paths[0].is_file() and paths[0].suffix == ".png"
    meta = json.loads((paths[0].parent / "metadata.json").read_text())
    assert meta["request"]["prompt"] == "a red fox" and meta["seed"] >= 0
    assert "Prefect UI" in proc.stderr  # the embedded Prefect server ran the attempt


def test_invalid_setting_fails_at_start_naming_the_variable(home: Path) -> None:
    proc = subprocess.run(_cli("worker"), env=_env(home, COMFYFLOW_WORKER_CONCURRENCY="lots"),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "COMFYFLOW_WORKER_CONCURRENCY has value 'lots'" in proc.stderr


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _post(url: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _cli("serve", "--simulate", "--render-time", "1.5", "--port", str(port)),
        env=_env(home, COMFYFLOW_PREFECT_ENABLED="false", COMFYFLOW_LEASE_SECONDS="2", COMFYFLOW_AUTH="none"),
        stdout=subprocess.DEVNULL, stderr=open(home / "serve.log", "ab"),
    )  # fmt: skip


def _wait_up(base: str, proc: subprocess.Popen[bytes], home: Path) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError((home / "serve.log").read_text()[-3000:])
        try:
            if _get(f"{base}/healthz")["status"] == "alive":
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not come up")


def test_serve_and_graceful_shutdown_lose_no_job(home: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(home, port)
    try:
        _wait_up(base, proc, home)
        ids = [_post(f"{base}/api/v1/jobs", {"prompt": f"fox {i}", "steps": 3})["job_id"] for i in range(6)]
        time.sleep(1.0)  # some are running, some queued
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (home / "serve.log").read_text()[-3000:]
        proc = _serve(home, port)  # the same home: the embedded Redis kept every job
        _wait_up(base, proc, home)
        deadline = time.time() + 90
        states: dict[str, str] = {}
        while time.time() < deadline:
            states = {i: _get(f"{base}/api/v1/jobs/{i}")["status"] for i in ids}
            if all(s == "succeeded" for s in states.values()):
                break
            time.sleep(0.3)
        assert set(states.values()) == {"succeeded"}, states
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
