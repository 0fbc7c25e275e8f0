"""What ``comfyflow serve`` tells its user at start: where things run, what happens to the embedded services on
exit, and (once) the first INTERNAL key.

The key never goes through the logging console (stderr lands in container logs): on a terminal it is printed
to stdout; otherwise it is written to ``<home>/first-internal-key.txt`` (mode 0600) and only that path is logged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import structlog

from comfyflow.embedded import sessions
from comfyflow.settings import Settings

KEY_FILE = "first-internal-key.txt"
log = structlog.get_logger("comfyflow.serve")


def services_line(settings: Settings) -> str | None:
    """One line saying whether the embedded services stop on exit, and how to stop them when they do not."""
    if not sessions.uses_embedded(settings):
        return None
    home = settings.resolved_home
    if sessions.kept(home):
        return (
            f"embedded services of {home}: kept running after exit (comfyflow services start or --keep-services); "
            "stop them with `comfyflow services stop`"
        )
    return (
        f"embedded services of {home}: stopped when the last comfyflow process using them exits "
        "(--keep-services keeps them running)"
    )


def deliver_first_key(message: str, home: Path, *, tty: bool | None = None) -> Path | None:
    """Show the bootstrap ``message`` (it holds the key) once: on stdout when it is a terminal, else in a file
    under the home, mode 0600, whose path is logged (returned)."""
    if tty is None:
        tty = sys.stdout.isatty()
    if tty:
        print(message, flush=True)
        return None
    path = home / KEY_FILE
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file existed with other permissions
        os.write(fd, (message + "\n").encode())
    finally:
        os.close(fd)
    log.warning(
        "no API key existed, so an INTERNAL key was created; stdout is not a terminal, so it was written to a "
        "file readable by this user only: read it, store the key safely, then delete the file",
        path=str(path),
    )
    return path
