"""A supervised ``prefect server start`` on 127.0.0.1, its database on the home's embedded PostgreSQL.

Files in ``<home>/prefect/``: ``state.json`` (pid, port), ``server.log``, ``lock`` and ``home/`` (the
server's ``PREFECT_HOME``). Never Prefect's ephemeral mode: one real server per home, with its UI, shared by
every comfyflow process using that home (never by another home: each has its own port, recorded in
``state.json``), until ``stop_prefect``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from comfyflow.embedded.postgres import ensure_postgres
from comfyflow.embedded.supervisor import (
    EmbeddedServiceError,
    free_port,
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
    """Return the argv prefix that runs the ``prefect`` CLI of this interpreter's environment, as
    ``comfyflow-prefect`` (``comfyflow.embedded.prefect_main``: its server binds timestamps cheaply)."""
    return [sys.executable, "-m", "comfyflow.embedded.prefect_main"]


#: Scheduling priority of the embedded Prefect server (``nice``): on a machine that also feeds GPUs, the kernel
#: serves comfyflow's workers, Redis and ComfyUI first, and Prefect's bookkeeping with the CPU left over (its
#: records then lag a burst of fast renders and catch up after it, instead of slowing the GPUs' feed).
NICENESS = 10


def niced(argv: list[str]) -> list[str]:
    """``argv`` run at :data:`NICENESS` (unchanged where there is no ``nice``)."""
    nice = shutil.which("nice")
    return [nice, "-n", str(NICENESS), *argv] if nice else argv


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
#: and events then show in the UI up to a second or two after they happen. A pool of 20 database connections
#: instead of 5 (+10 overflow, opened and closed per use): with the API, the recorder and the persister busy at
#: once, Prefect opened a new PostgreSQL connection for nearly every generation (457 for 500; 6 with 20), which
#: cost the server and PostgreSQL ~25 ms of CPU a generation (benchmarks/ab_prefect_settings.py).
SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
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
    """Return the API URL of the home's own Prefect server, starting it when it does not run.

    Each home runs its own server (never one another home or program started): on ``port`` when it is free,
    else on the next free port above it. The port is recorded in ``<home>/prefect/state.json`` and kept while
    it stays free, so the UI address does not move between starts. The server runs detached, with its database
    on the home's embedded PostgreSQL (started too when it is down) and its log in ``<home>/prefect/server.log``.

    Raises:
        EmbeddedServiceError: when no port is free near ``port`` or the server does not become healthy.
    """
    folder = Path(home).resolve() / "prefect"
    state = read_state(folder)
    if _ours_and_healthy(home, state, port, timeout=5.0):  # fast path, no lock: a few milliseconds
        return _api_url(state["port"])
    with service_lock(folder):
        state = read_state(folder)
        if pid_alive(state.get("pid"), NEEDLE):
            if state.get("requested", state.get("port")) == port and state.get("database_url") == ensure_postgres(home):
                # ours, and still starting (the process that started it died before it answered) or wedged
                running = state["port"]
                wait_until(lambda: bool(health(running)) or not pid_alive(state["pid"]), START_TIMEOUT_SECONDS, 0.2)
                if health(running):
                    return _api_url(running)
            # wedged, or asked for another port, or its database moved to another port: replace it
            terminate(state["pid"], timeout=STOP_GRACE_SECONDS, group=True)
        recorded = state.get("port") if state.get("requested", state.get("port")) == port else None
        database_url = ensure_postgres(home)
        for _ in range(3):  # another program may take the port between our probe and the server's bind
            chosen = _free_port_from(recorded or port)
            migrated = (
                state.get("migrated_by") == _prefect_version() and state.get("database_url") == database_url
            ) or (
                not state.get("migrated_by")  # a new home whose database is a copy of the migrated template
                and read_state(Path(home).resolve() / "postgres").get("prefect_migrated_by") == _prefect_version()
            )
            try:
                return _start(folder, chosen, port, database_url, migrated=migrated)
            except _PortTaken:
                recorded = None
        raise EmbeddedServiceError(f"the Prefect server could not bind a free port from {port} on {HOST}")


def _ours_and_healthy(home: Path, state: dict, port: int, timeout: float = 2.0) -> bool:
    return (
        pid_alive(state.get("pid"), NEEDLE)
        and state.get("requested", state.get("port")) == port
        and bool(health(state["port"], timeout=timeout))
        and state.get("database_url") == ensure_postgres(home)
    )


def _prefect_version() -> str:
    return importlib.metadata.version("prefect")


def _api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def _free_port_from(port: int, tries: int = 100) -> int:
    """``port`` when nothing listens there and it can be bound, else the next such port above it."""
    for candidate in range(port, min(port + tries, 65536)):
        if not port_open(candidate, HOST, timeout=0.2) and free_port(candidate, HOST) == candidate:
            if candidate != port:
                logging.getLogger(__name__).warning(
                    "port %d is taken; this home's Prefect server uses %d (recorded in the home)", port, candidate
                )
            return candidate
    raise EmbeddedServiceError(
        f"no free port in {port}..{port + tries - 1} on {HOST} for the Prefect server; set COMFYFLOW_PREFECT_PORT "
        "to a free port (or COMFYFLOW_PREFECT_API_URL to an existing Prefect server).",
        details={"port": port, "setting": "COMFYFLOW_PREFECT_PORT"},
    )


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


class _PortTaken(Exception):
    pass


def _start(folder: Path, port: int, requested: int, database_url: str, *, migrated: bool = False) -> str:
    """Start the server; ``migrated``: its database was migrated by this Prefect version, so it skips the
    migration check at start (seconds)."""
    log = folder / "server.log"
    api_url = _api_url(port)
    extra = {"PREFECT_API_DATABASE_MIGRATE_ON_START": "false"} if migrated else {}
    env = server_env(api_url, database_url, folder / "home", **extra)
    argv = niced([*prefect_executable(), "server", "start", "--host", HOST, "--port", str(port)])
    pid = spawn_detached(argv, log, env)
    state = {"pid": pid, "port": port, "requested": requested, "database_url": database_url}
    write_state(folder, state)
    wait_until(lambda: bool(health(port)) or not pid_alive(pid), START_TIMEOUT_SECONDS, 0.1)
    if health(port) and pid_alive(pid, NEEDLE):
        write_state(folder, {**state, "migrated_by": _prefect_version()})  # it migrated (or had no need) at start
        return api_url
    if pid_alive(pid):
        terminate(pid, group=True)
    if "already in use" in log_tail(log, 5) or health(port):
        raise _PortTaken(port)
    raise EmbeddedServiceError(
        f"the Prefect server on {HOST}:{port} did not become healthy within {START_TIMEOUT_SECONDS:.0f} s; "
        f"see {log}:\n{log_tail(log)}"
    )
