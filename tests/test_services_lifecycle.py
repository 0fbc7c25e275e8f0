"""Embedded services end with the processes that use them: `serve`, `generate` and `worker` stop what they
started on exit (the last one out), unless `comfyflow services start` or `--keep-services` kept them; each home
runs its own Prefect server; the first INTERNAL key never reaches the log stream."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyflow.embedded import stop_services
from comfyflow.embedded.redis import redis_pid
from comfyflow.embedded.supervisor import pid_alive, read_state, wait_until
from comfyflow.testing.api_server import free_port
from comfyflow.testing.processes import home_processes


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, pytest resets it to 0700 and the embedded PostgreSQL (unprivileged)
    # could no longer reach its data.
    path = Path(tempfile.mkdtemp(prefix="comfyflow-life-"))
    yield path
    stop_services(path)
    left = home_processes(path)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not left, left


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYFLOW_", "PREFECT_"))}
    env.update({"COMFYFLOW_HOME": str(home), "COMFYFLOW_PREFECT_ENABLED": "false", **extra})
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "comfyflow.cli", *args]


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _serve(home: Path, port: int, *args: str, env: dict[str, str] | None = None, log: str = "serve.log"):  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        _cli("serve", "--simulate", "--port", str(port), *args),
        env=env or _env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=open(home / log, "ab"),
    )  # fmt: skip


def _wait_ready(proc: subprocess.Popen, base: str, home: Path, log: str = "serve.log") -> None:  # type: ignore[type-arg]
    assert wait_until(lambda: _ready(base) or proc.poll() is not None, 150, 0.2)
    assert proc.poll() is None, (home / log).read_text()[-3000:]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        proc.send_signal(sig)
    assert proc.wait(timeout=90) == 0


def _services(home: Path) -> dict[int, str]:
    """The home's processes other than comfyflow commands themselves."""
    return {pid: cmd for pid, cmd in home_processes(home).items() if "comfyflow.cli" not in cmd}


@pytest.mark.slow
def test_ctrl_c_on_serve_leaves_no_process_of_the_home_and_each_home_has_its_own_prefect(home: Path) -> None:
    other = Path(tempfile.mkdtemp(prefix="comfyflow-other-"))  # a home whose Prefect server takes the port
    taken = free_port()
    first = _serve(other, free_port(), env=_env(other, COMFYFLOW_PREFECT_ENABLED="true",
                                                   COMFYFLOW_PREFECT_PORT=str(taken)), log="other.log")  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = None
    try:
        _wait_ready(first, f"http://127.0.0.1:{int(first.args[-1])}", other, "other.log")
        assert read_state(other / "prefect")["port"] == taken
        env = _env(home, COMFYFLOW_PREFECT_ENABLED="true", COMFYFLOW_PREFECT_PORT=str(taken))
        proc = _serve(home, port, env=env)
        _wait_ready(proc, base, home)
        running = _services(home)
        assert any("redis-server" in c for c in running.values()), running
        assert any("postgres" in c for c in running.values()), running
        assert any("prefect" in c for c in running.values()), running
        own = read_state(home / "prefect")["port"]
        assert own != taken and pid_alive(read_state(home / "prefect")["pid"])  # its own server, not the other's
        banner = (home / "serve.log").read_text()
        assert f"Prefect UI on http://127.0.0.1:{own}" in banner
        assert "stopped when the last comfyflow process using them exits (--keep-services keeps them" in banner
        _stop(proc)  # Ctrl-C
        assert home_processes(home) == {}, home_processes(home)
        assert _services(other), "the other home's services are not touched"
    finally:
        for p in (proc, first):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=90)
        stop_services(other)
        left = home_processes(other)
        shutil.rmtree(other, ignore_errors=True)
    assert left == {}


def test_generate_stops_the_redis_it_started(home: Path) -> None:
    proc = subprocess.run(
        _cli("generate", "a fox", "--simulate", "--render-time", "0.1", "--width", "64", "--height", "64"),
        env=_env(home), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_state(home / "redis")["port"]  # it did run on the embedded Redis
    assert home_processes(home) == {}


def test_services_started_by_services_start_or_kept_by_flag_keep_running(home: Path) -> None:
    started = subprocess.run(_cli("services", "start"), env=_env(home), capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pid = redis_pid(home)
    assert pid and "until `comfyflow services stop`" in started.stderr
    port = free_port()
    proc = _serve(home, port)
    _wait_ready(proc, f"http://127.0.0.1:{port}", home)
    _stop(proc, signal.SIGTERM)
    assert "kept running after exit" in (home / "serve.log").read_text()
    assert redis_pid(home) == pid  # still the same server
    stopped = subprocess.run(_cli("services", "stop"), env=_env(home), capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and not pid_alive(pid) and home_processes(home) == {}

    proc = _serve(home, port, "--keep-services")  # kept by the flag, for the later commands too
    _wait_ready(proc, f"http://127.0.0.1:{port}", home)
    _stop(proc)
    assert (
        redis_pid(home) is not None and "stop them with `comfyflow services stop`" in (home / "serve.log").read_text()
    )
    subprocess.run(_cli("services", "stop"), env=_env(home), capture_output=True, timeout=60, check=True)
    assert home_processes(home) == {}


def test_the_last_process_using_the_services_stops_them(home: Path) -> None:
    worker = subprocess.Popen(_cli("worker"), env=_env(home), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=open(home / "worker.log", "ab"))  # fmt: skip
    port = free_port()
    proc = None
    try:
        assert wait_until(lambda: redis_pid(home) is not None or worker.poll() is not None, 60)
        pid = redis_pid(home)
        proc = _serve(home, port)
        _wait_ready(proc, f"http://127.0.0.1:{port}", home)
        _stop(proc)
        assert pid_alive(pid), "the worker still uses the embedded Redis"
        _stop(worker, signal.SIGTERM)
        assert not pid_alive(pid) and home_processes(home) == {}
    finally:
        for p in (proc, worker):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_first_key_off_a_terminal_goes_to_a_private_file_not_the_logs(home: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    key_file = home / "first-internal-key.txt"
    proc = _serve(home, port)
    try:
        _wait_ready(proc, base, home)
        assert wait_until(key_file.exists, 30)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = next(w for w in key_file.read_text().split() if w.startswith("cf_live_"))
        req = urllib.request.Request(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["role"] == "internal"
    finally:
        _stop(proc)
    out = proc.stdout.read().decode() if proc.stdout else ""
    log = (home / "serve.log").read_text()
    assert "cf_live_" not in log and "cf_live_" not in out, "never on the log stream nor a piped stdout"
    assert str(key_file) in log  # its path is logged
    key_file.unlink()
    proc = _serve(home, port)
    try:
        _wait_ready(proc, base, home)
    finally:
        _stop(proc)
    assert not key_file.exists(), "created and shown once only"


def test_first_key_on_a_terminal_is_printed_once_to_stdout(home: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def run_on_a_terminal() -> str:
        leader, follower = pty.openpty()
        log = open(home / "serve.log", "ab")  # the child writes it
        argv = _cli("serve", "--simulate", "--port", str(port))
        proc = subprocess.Popen(argv, env=_env(home), stdin=subprocess.DEVNULL, stdout=follower, stderr=log)
        os.close(follower)
        seen = b""
        try:
            _wait_ready(proc, base, home)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and b"/api/v1/me" not in seen:
                if select.select([leader], [], [], 0.2)[0]:
                    seen += os.read(leader, 65536)
            for key in {w.strip("'") for w in seen.decode(errors="replace").split() if w.startswith("cf_live_")}:
                req = urllib.request.Request(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {key}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    assert json.loads(r.read())["role"] == "internal"
        finally:
            _stop(proc)
            os.close(leader)
        return seen.decode(errors="replace")

    printed = run_on_a_terminal()
    assert [w for w in printed.split() if w.startswith("cf_live_")], printed  # and it works (checked above)
    assert "cf_live_" not in (home / "serve.log").read_text()
    assert not (home / "first-internal-key.txt").exists()
    assert "cf_live_" not in run_on_a_terminal(), "printed only on the first start"


def test_a_dead_process_does_not_keep_the_services(home: Path) -> None:
    from comfyflow.embedded import ensure_redis, sessions

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "sessions").mkdir(parents=True)
    (home / "sessions" / f"{dead.pid}.0").write_text("1")  # left behind by a process killed with SIGKILL
    token = sessions.join(home)
    ensure_redis(home)
    assert json.dumps(sessions.live_sessions(home)) == json.dumps([token])
    assert sessions.leave(home, token) is True
    assert redis_pid(home) is None
