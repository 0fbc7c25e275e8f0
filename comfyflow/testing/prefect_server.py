"""A real Prefect server for a whole pytest session, on a copy of a pre-migrated PostgreSQL database.

``prefect_test_harness`` runs every migration on a fresh database each session (~22 s). Here the migrations
run once into a template database, ``comfyflow_prefect_template``, marked with the Prefect version that
migrated it (a database comment); each session copies it (``CREATE DATABASE ... TEMPLATE``, ~0.2 s), starts
``prefect server start`` on a free loopback port without migrating, and drops its copy at the end.

The PostgreSQL server is, in order: the ``admin_url`` argument, ``COMFYFLOW_TEST_POSTGRES_URL``, the server on
127.0.0.1:5432 (user ``postgres``, trust auth, as on CI) when it answers, else an embedded PostgreSQL kept
running in ``$TMPDIR/comfyflow-prefect-test-<uid>/home`` (stop it with ``stop_postgres`` on that folder).
Use it as::

    @pytest.fixture(scope="session")
    def prefect_api_url():
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with prefect_server() as url, temporary_settings({PREFECT_API_URL: url}):
            yield url
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from comfyflow.embedded.postgres import ensure_postgres, postgres_bin
from comfyflow.embedded.prefect import health, niced, prefect_executable, server_env
from comfyflow.embedded.supervisor import (
    EmbeddedServiceError,
    free_port,
    log_tail,
    pid_alive,
    port_open,
    service_lock,
    terminate,
    wait_until,
)

TEMPLATE = "comfyflow_prefect_template"
COPY_PREFIX = "comfyflow_test_prefect_"
LOCAL_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT_SECONDS = 90.0


@contextlib.contextmanager
def prefect_server(admin_url: str | None = None, *, services: bool = True) -> Iterator[str]:
    """Run a Prefect server on a fresh copy of the migrated template database; yield its API URL.

    Args:
        admin_url: ``postgresql://`` URL of a superuser on a PostgreSQL server (see the module docstring for
            the default).
        services: run Prefect's background services (scheduler, late runs, ...); False saves ~0.6 s.

    Raises:
        EmbeddedServiceError: when the database cannot be prepared or the server does not become healthy.
    """
    admin = _admin_url(admin_url)
    cache = _cache_dir()
    with service_lock(cache / "template"):  # one session (re)builds the template, the others wait for it
        _ensure_template(admin, cache)
        _drop_stale_copies(admin)
        database = f"{COPY_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        _psql(admin, f'CREATE DATABASE "{database}" TEMPLATE "{TEMPLATE}"')
    workdir = Path(tempfile.mkdtemp(prefix="comfyflow-prefect-"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = server_env(api_url, _db_url(admin, database), workdir, PREFECT_API_DATABASE_MIGRATE_ON_START="false")
    argv = niced([*prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)])
    log = workdir / "server.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*argv, *([] if services else ["--no-services"])],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: bool(health(port)) or process.poll() is not None, START_TIMEOUT_SECONDS, 0.05)
        if not health(port):
            raise EmbeddedServiceError(f"the test Prefect server did not start; {log}:\n{log_tail(log)}")
        yield api_url
    finally:
        if process.poll() is None:
            terminate(process.pid, timeout=10.0, group=True)
        process.wait()
        _psql(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)


def _admin_url(admin_url: str | None) -> str:
    if admin_url:
        return admin_url
    if env_url := os.environ.get("COMFYFLOW_TEST_POSTGRES_URL"):
        return env_url
    if port_open(5432):
        try:
            _psql(LOCAL_ADMIN_URL, "SELECT 1")
            return LOCAL_ADMIN_URL
        except EmbeddedServiceError:
            pass
    url = ensure_postgres(_cache_dir() / "home", database="postgres")
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _cache_dir() -> Path:
    # In the temp folder, not ~/.cache: as root, the embedded PostgreSQL's user could not traverse /root.
    folder = Path(tempfile.gettempdir()) / f"comfyflow-prefect-test-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.getuid():
        raise EmbeddedServiceError(f"{folder} belongs to another user; remove it or set COMFYFLOW_TEST_POSTGRES_URL")
    return folder


def _db_url(admin: str, database: str) -> str:
    parts = urlsplit(admin)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{database}", "", ""))


def _ensure_template(admin: str, cache: Path) -> None:
    """Create and migrate the template database unless it exists, migrated by this Prefect version."""
    marker = f"migrated by prefect {importlib.metadata.version('prefect')}"
    found = _psql(admin, f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{TEMPLATE}'")
    if found == marker:
        return
    _psql(admin, f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
    _psql(admin, f'CREATE DATABASE "{TEMPLATE}"')
    url = _db_url(admin, TEMPLATE)
    env = server_env("http://127.0.0.1:1/api", url, cache / "prefect-home")
    out = subprocess.run(
        [*prefect_executable(), "server", "database", "upgrade", "-y"],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    if out.returncode != 0:
        raise EmbeddedServiceError(f"migrating {TEMPLATE} failed:\n{(out.stdout + out.stderr)[-3000:]}")
    _psql(admin, f"COMMENT ON DATABASE \"{TEMPLATE}\" IS '{marker}'")


def _drop_stale_copies(admin: str) -> None:
    """Drop the copies left by sessions that died before their cleanup (their pid no longer runs)."""
    names = _psql(admin, f"SELECT datname FROM pg_database WHERE datname LIKE '{COPY_PREFIX}%'").split()
    for name in names:
        pid = name.removeprefix(COPY_PREFIX).split("_")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            _psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _psql(admin: str, sql: str) -> str:
    argv = [str(postgres_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tAc", sql, admin]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    if out.returncode != 0:
        raise EmbeddedServiceError(f"PostgreSQL at {urlsplit(admin).hostname} refused {sql!r}: {out.stderr.strip()}")
    return out.stdout.strip()
