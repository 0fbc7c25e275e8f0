"""Which processes belong to a comfyflow home: what "nothing left behind" is checked against."""

from __future__ import annotations

import os
from pathlib import Path

from comfyflow.embedded.supervisor import pid_alive


def home_processes(home: Path) -> dict[int, str]:
    """Live processes (pid -> command line) whose command line, environment or working folder names ``home``
    (Redis rewrites its command line and environment, but works in ``<home>/redis``), and their
    descendants (e.g. PostgreSQL's workers). Processes started with ``COMFYFLOW_HOME=<home>`` in their
    environment, and every embedded server of the home (their environment inherits it, their command lines or
    ``PREFECT_HOME`` name the home folder) are found."""
    needle = str(Path(home).resolve()).encode()
    parents: dict[int, int] = {}
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
            parents[pid] = int(stat.rsplit(")", 1)[-1].split()[1])
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
        except (OSError, ValueError, IndexError):
            continue
        if (needle in cmdline or needle in environ or cwd.startswith(needle)) and pid_alive(pid):
            found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found and pid_alive(pid):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
                grew = True
    return found
