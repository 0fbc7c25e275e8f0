"""Prefect scaled out the way Prefect supports it, for tests and benchmarks: several API replicas
(``prefect server start --no-services``) and one services process (``prefect server services start``) on one
PostgreSQL database, with Prefect's Redis messaging (``prefect-redis``) carrying the events between them.

Without Redis messaging every replica has its own in-memory broker: the task-run events a worker sends over its
websocket to a ``--no-services`` replica reach no task-run recorder and are lost. With it they go through Redis
streams to the one services process, which records them (``deploy/`` runs the same shape)::

    with prefect_replicas(2) as urls:   # ["http://127.0.0.1:<a>/api", "http://127.0.0.1:<b>/api"]
        ...

The database is a copy of the migrated template (as ``prefect_server``), Redis a private ``redis-server`` in a
temporary folder; everything is stopped and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from comfyflow.embedded.prefect import health, prefect_executable, server_env
from comfyflow.embedded.supervisor import EmbeddedServiceError, free_port, log_tail, service_lock, terminate, wait_until
from comfyflow.testing.prefect_server import (
    COPY_PREFIX,
    START_TIMEOUT_SECONDS,
    TEMPLATE,
    _admin_url,
    _cache_dir,
    _db_url,
    _drop_stale_copies,
    _ensure_template,
    _psql,
)
from comfyflow.testing.redis_process import RedisProcess

#: Prefect's own Redis DB in the deploy files is /1, beside comfyflow's /0 on the same server.
PREFECT_REDIS_DB = 1


def redis_messaging_env(redis_url: str) -> dict[str, str]:
    """The settings that put a Prefect server's events, caches, ordering, leases and docket on ``redis_url``.

    Every API replica and the services process need the same values (checked against Prefect 3.9 settings and
    ``prefect_redis.client.RedisMessagingSettings``, ``PREFECT_REDIS_MESSAGING_URL``).
    """
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_SERVER_DOCKET_URL": redis_url,
        "PREFECT_REDIS_MESSAGING_URL": redis_url,
    }


@contextlib.contextmanager
def prefect_replicas(replicas: int = 2, admin_url: str | None = None) -> Iterator[list[str]]:
    """Run ``replicas`` API processes and one services process on one fresh database; yield the API URLs.

    Raises:
        EmbeddedServiceError: when the database cannot be prepared or a process does not start.
    """
    admin = _admin_url(admin_url)
    with service_lock(_cache_dir() / "template"):
        _ensure_template(admin, _cache_dir())
        _drop_stale_copies(admin)
        database = f"{COPY_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        _psql(admin, f'CREATE DATABASE "{database}" TEMPLATE "{TEMPLATE}"')
    workdir = Path(tempfile.mkdtemp(prefix="comfyflow-prefect-replicas-"))
    procs: list[subprocess.Popen[bytes]] = []
    redis = RedisProcess(workdir / "redis", persistent=False)
    try:
        redis.start()
        shared = {
            **redis_messaging_env(f"redis://127.0.0.1:{redis.port}/{PREFECT_REDIS_DB}"),
            "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        }
        db_url = _db_url(admin, database)
        ports = [free_port() for _ in range(replicas)]
        urls = [f"http://127.0.0.1:{port}/api" for port in ports]
        for i, port in enumerate(ports):  # one after the other: concurrent first starts race registering
            env = server_env(urls[i], db_url, workdir / f"home-{i}", **shared)  # block types (unique violation)
            argv = ["server", "start", "--no-services", "--host", "127.0.0.1", "--port", str(port)]
            proc = _spawn(argv, env, workdir / f"api-{i}.log")
            procs.append(proc)
            wait_until(lambda: bool(health(port)) or proc.poll() is not None, START_TIMEOUT_SECONDS, 0.05)  # noqa: B023
            if not health(port):
                raise EmbeddedServiceError(f"API replica {i} did not start:\n{log_tail(workdir / f'api-{i}.log')}")
        env = server_env(urls[0], db_url, workdir / "home-services", **shared)
        procs.append(_spawn(["server", "services", "start"], env, workdir / "services.log"))
        if procs[-1].poll() is not None:
            raise EmbeddedServiceError(f"the services process exited:\n{log_tail(workdir / 'services.log')}")
        yield urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                terminate(proc.pid, timeout=10.0, group=True)
            proc.wait()
        redis.kill()
        _psql(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefect_executable(), *args], env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
