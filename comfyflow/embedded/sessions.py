"""Who uses a home's embedded services, and who stops them when nobody does any more.

A comfyflow process that uses the embedded services joins the home before it starts or finds them: it writes
``<home>/sessions/<pid>.<n>`` (holding the process's start time, which guards against a reused pid) and removes
it when it ends. The last one to leave stops the services, unless they are kept: ``<home>/services.keep``
exists, written by ``comfyflow services start`` and by ``--keep-services`` and removed by ``comfyflow services
stop``. A process killed with SIGKILL leaves its file behind; its pid is dead, so it no longer counts, and the
next process to leave stops the services it left running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyflow.embedded.supervisor import EmbeddedServiceError, pid_alive, service_lock
from comfyflow.settings import Settings

KEEP_FILE = "services.keep"
log = logging.getLogger(__name__)
_counter = itertools.count()


def uses_embedded(settings: Settings) -> bool:
    """Whether ``settings`` need any embedded service (Redis or the Prefect server with its PostgreSQL)."""
    return settings.redis_url is None or (settings.prefect_enabled and not settings.prefect_api_url)


def kept(home: Path) -> bool:
    """Whether the home's services keep running after the last process using them exits."""
    return (Path(home) / KEEP_FILE).exists()


def keep(home: Path, value: bool = True) -> None:
    """Mark the home's services as kept (``comfyflow services start``, ``--keep-services``) or not."""
    path = Path(home) / KEEP_FILE
    if value:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept running after exit; `comfyflow services stop` stops them and removes this file\n")
    else:
        path.unlink(missing_ok=True)


def join(home: Path) -> str:
    """Register this process as a user of the home's services; return the token :func:`leave` needs."""
    folder = Path(home) / "sessions"
    token = f"{os.getpid()}.{next(_counter)}"
    with service_lock(folder):
        (folder / token).write_text(str(_start_time(os.getpid())))
    return token


def leave(home: Path, token: str) -> bool:
    """Unregister; when no live process uses the services and they are not kept, stop them (-> True)."""
    from comfyflow.embedded import stop_services

    folder = Path(home) / "sessions"
    with service_lock(folder):
        (folder / token).unlink(missing_ok=True)
        if kept(home) or live_sessions(home):
            return False
        try:
            stop_services(home)
        except EmbeddedServiceError as exc:
            log.warning("could not stop the embedded services of %s: %s", home, exc.message)
        return True


def live_sessions(home: Path) -> list[str]:
    """Tokens of the live processes using the home's services (files of dead ones are removed)."""
    folder = Path(home) / "sessions"
    alive = []
    for entry in folder.iterdir() if folder.is_dir() else []:
        if entry.name == "lock":
            continue
        pid = int(entry.name.split(".")[0]) if entry.name.split(".")[0].isdigit() else 0
        try:
            started = entry.read_text().strip()
        except OSError:
            continue
        if pid_alive(pid) and started == str(_start_time(pid)):
            alive.append(entry.name)
        else:
            entry.unlink(missing_ok=True)
    return alive


@contextlib.contextmanager
def session(settings: Settings) -> Iterator[None]:
    """Use the home's embedded services for the ``with`` block; the last user out stops them (unless kept)."""
    if not uses_embedded(settings):
        yield
        return
    home = settings.resolved_home
    token = join(home)
    try:
        yield
    finally:
        leave(home, token)


@dataclass
class EarlyStart:
    """Services being started in a thread while the process goes on (e.g. importing the API app)."""

    token: str | None
    future: concurrent.futures.Future[Any]

    def abandon(self, home: Path) -> None:
        """Leave after the start finished (failed or not): the process will not use the services after all."""
        with contextlib.suppress(BaseException):
            self.future.result(timeout=300)
        if self.token is not None:
            leave(home, self.token)
            self.token = None


def start_early(settings: Settings) -> EarlyStart:
    """Join the home (when it uses embedded services) and start ensuring its services in a thread now."""
    from comfyflow.embedded import ensure_services

    token = join(settings.resolved_home) if uses_embedded(settings) else None
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(asyncio.run(ensure_services(settings)))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=work, name="comfyflow-services", daemon=True).start()
    return EarlyStart(token, future)


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 where /proc is missing)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0
