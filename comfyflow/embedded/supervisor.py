"""Helpers shared by the embedded services: a lock per service, a state file, pids, ports, detached spawns.

Every embedded service keeps its files in ``<home>/<service>/``: ``lock`` (an ``fcntl.flock`` taken around
"is it running? else start it"), ``state.json`` (pid, port, password; mode 0600) and its log. The servers are
started detached (their own session, parent = init) so that they outlive the comfyflow process that started
them and every comfyflow process using the same home shares one of each.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from comfyflow.errors import ComfyflowError

LOCK_TIMEOUT_SECONDS = 180.0


class EmbeddedServiceError(ComfyflowError):
    """Raised when an embedded service cannot be started, reached or stopped."""

    code = "SERVICE_UNAVAILABLE"


@contextlib.contextmanager
def service_lock(folder: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the exclusive lock of one service folder (created if needed) for the ``with`` block.

    Raises:
        EmbeddedServiceError: when another process holds the lock for longer than ``timeout`` seconds.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"{folder / 'lock'} is held by another process for more than {timeout:.0f} s; "
                        "a comfyflow process may be stuck starting this service. Stop it, or remove the lock."
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_state(folder: Path) -> dict[str, Any]:
    """Return the service's ``state.json`` as a dict, or an empty dict when it is missing or unreadable."""
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Replace the service's ``state.json`` atomically, readable by its owner only (it holds a password)."""
    tmp = folder / f"state.json.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    tmp.replace(folder / "state.json")


def new_password() -> str:
    """Return a random password made of URL-safe characters only (no quoting needed in URLs or configs)."""
    return secrets.token_urlsafe(24)


def pid_alive(pid: int | None, needle: str | None = None) -> bool:
    """Whether process ``pid`` runs (zombies count as dead) and, given ``needle``, its command line has it.

    The ``needle`` guards against a pid reused by an unrelated process after a reboot or crash.
    """
    if not pid or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (macOS): existence only
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    if needle is None:
        return True
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """Return ``preferred`` when it can be bound on ``host``, else a free port chosen by the kernel.

    Probes with SO_REUSEADDR, as Redis and PostgreSQL bind: a port whose old connections linger in TIME_WAIT
    after a restart is free for them, so a restarted server keeps its port (and its URL).
    """
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise EmbeddedServiceError(f"no free TCP port on {host}")  # pragma: no cover - bind to 0 does not fail


def spawn_detached(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in a new session, re-parented to init, output appended to ``log_path``; return its pid.

    A short-lived ``sh`` backgrounds the command and exits, so the server is nobody's child: no zombie is left
    in the comfyflow process that started it, and it keeps running when that process exits.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shell_env = {**(env if env is not None else os.environ), "CF_SPAWN_LOG": str(log_path)}
    script = '"$@" </dev/null >>"$CF_SPAWN_LOG" 2>&1 & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *argv],
        env=shell_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        check=True,
        text=True,
    )
    return int(out.stdout.strip())


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call ``check`` until it returns True (-> True) or ``timeout`` seconds pass (-> False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def terminate(pid: int, timeout: float = 10.0, *, group: bool = False) -> None:
    """Send SIGTERM to ``pid`` (its whole process group with ``group``), then SIGKILL after ``timeout`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if group:
                os.killpg(os.getpgid(pid), sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: not pid_alive(pid), timeout):
            return
    if pid_alive(pid):  # pragma: no cover - SIGKILL failed (e.g. uninterruptible I/O)
        raise EmbeddedServiceError(f"process {pid} survived SIGKILL")


def log_tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a log file (empty when missing), for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
