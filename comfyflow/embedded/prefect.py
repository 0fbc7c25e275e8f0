"""A supervised ``prefect server start`` on 127.0.0.1, its database on the home's embedded PostgreSQL.

Files in ``<home>/prefect/``: ``state.json`` (pid, port), ``server.log``, ``lock`` and ``home/`` (the
server's ``PREFECT_HOME``). Never Prefect's ephemeral mode: one real server, with its UI, shared by every
comfyflow process using the same home, and still running after they exit until ``stop_prefect``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from comfyflow.embedded.postgres import ensure_postgres
from comfyflow.embedded.supervisor import (
    EmbeddedServiceError,
    log_tail,
    pid_alive,
    port_open,
    read_state,
    service_lock,
    spawn_detached,
    terminate,
    wait_until,
    write_state,
)

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 120.0  # the first start runs every database migration
# A clean shutdown takes ~0.2 s. After its PostgreSQL restarted under it, Prefect 3.9's shutdown hangs ~30 s
# closing its LISTEN connection (automation change listener); its state is all in PostgreSQL: SIGKILL is safe.
STOP_GRACE_SECONDS = 5.0
NEEDLE = "prefect"  # in the command line of the server process: guards against reused pids
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def prefect_executable() -> list[str]:
    """Return the argv prefix that runs the ``prefect`` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("prefect")
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect")
    return [found] if found else [sys.executable, "-m", "prefect"]


def server_env(api_url: str, database_url: str, prefect_home: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a quiet, non-ephemeral Prefect server on ``database_url``."""
    env = dict(os.environ)  # other PREFECT_* variables pass through: the server stays configurable
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_API_URL=api_url,
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
        PREFECT_SERVER_EPHEMERAL_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_TO_API_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        DO_NOT_TRACK="1",
    )
    for name, value in SERVER_TUNING.items():  # PREFECT_* variables the user set win
        env.setdefault(name, value)
    env.update(extra)
    return env


#: How the server's event consumers batch their database writes. Prefect's defaults write every task-run event
#: in its own transaction (batch size 1) and persist events 20 at a time: at one generation per GPU every fraction
#: of a second that cost ~140 ms of server CPU per generation and the records fell minutes behind; in batches of
#: a few hundred, flushed every second or two, ~80 ms and no backlog (benchmarks/PREFECT_PROFILE.md). Task runs
#: and events then show in the UI up to a second or two after they happen.
SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
}


def health(port: int, timeout: float = 2.0) -> bool | None:
    """Ask ``/api/health``: True = a Prefect server answers, None = nothing listens, False = another thing."""
    url = f"http://{HOST}:{port}/api/health"
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status == 200 and json.loads(response.read() or b"null") is True
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, ValueError) or port_open(port):
            return False
        return None


def ensure_prefect(home: Path, port: int = 4200) -> str:
    """Return the API URL of the Prefect server on 127.0.0.1:``port``, starting one when none answers there.

    A server started here runs detached, with its database on the home's embedded PostgreSQL (started too
    when it is down) and its log in ``<home>/prefect/server.log``. When a Prefect server that this home did
    not start answers on the port, its URL is returned as is.

    Raises:
        EmbeddedServiceError: when the port is taken by something that is not a Prefect server (change
            ``COMFYFLOW_PREFECT_PORT``), or the server does not become healthy.
    """
    folder = Path(home).resolve() / "prefect"
    api_url = f"http://{HOST}:{port}/api"
    state = read_state(folder)
    ours = pid_alive(state.get("pid"), NEEDLE)
    if health(port, timeout=5.0) and (  # fast path, no lock: a few milliseconds
        not ours or (state.get("port") == port and state.get("database_url") == ensure_postgres(home))
    ):
        return api_url
    with service_lock(folder):
        state = read_state(folder)
        if pid_alive(state.get("pid"), NEEDLE):
            if state.get("port") == port and state.get("database_url") == ensure_postgres(home):
                # ours, and still starting (the process that started it died before it answered) or wedged
                wait_until(lambda: bool(health(port)) or not pid_alive(state["pid"]), START_TIMEOUT_SECONDS, 0.2)
                if health(port):
                    return api_url
            # wedged, or on another port, or its database moved to another port: replace it
            terminate(state["pid"], timeout=STOP_GRACE_SECONDS, group=True)
        answer = health(port)
        if answer:
            return api_url
        if answer is False:
            raise _port_taken(port)
        return _start(folder, port, api_url, ensure_postgres(home))


def stop_prefect(home: Path) -> bool:
    """Stop the Prefect server this home started (SIGTERM, SIGKILL 5 s later); return False when none runs."""
    folder = Path(home).resolve() / "prefect"
    if not folder.is_dir():
        return False
    with service_lock(folder):
        state = read_state(folder)
        if not pid_alive(state.get("pid"), NEEDLE):
            return False
        terminate(state["pid"], timeout=STOP_GRACE_SECONDS, group=True)
        write_state(folder, {**state, "pid": None})
        return True


def prefect_pid(home: Path) -> int | None:
    """Return the pid of the Prefect server this home started, or None when it is not running."""
    pid = read_state(Path(home).resolve() / "prefect").get("pid")
    return pid if pid_alive(pid, NEEDLE) else None


def _start(folder: Path, port: int, api_url: str, database_url: str) -> str:
    log = folder / "server.log"
    env = server_env(api_url, database_url, folder / "home")
    argv = [*prefect_executable(), "server", "start", "--host", HOST, "--port", str(port)]
    pid = spawn_detached(argv, log, env)
    write_state(folder, {"pid": pid, "port": port, "database_url": database_url})
    wait_until(lambda: bool(health(port)) or not pid_alive(pid), START_TIMEOUT_SECONDS, 0.1)
    if health(port):
        return api_url
    if pid_alive(pid):
        terminate(pid, group=True)
    if "already in use" in log_tail(log, 5):
        raise _port_taken(port)
    raise EmbeddedServiceError(
        f"the Prefect server on {HOST}:{port} did not become healthy within {START_TIMEOUT_SECONDS:.0f} s; "
        f"see {log}:\n{log_tail(log)}"
    )


def _port_taken(port: int) -> EmbeddedServiceError:
    return EmbeddedServiceError(
        f"port {port} on {HOST} is taken by something that is not a Prefect server; expected a free port or "
        "a Prefect server there. Set COMFYFLOW_PREFECT_PORT to a free port (or COMFYFLOW_PREFECT_API_URL to "
        "an existing Prefect server).",
        details={"port": port, "setting": "COMFYFLOW_PREFECT_PORT"},
    )
