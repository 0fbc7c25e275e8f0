"""What the benchmarks share: CPU seconds of processes, their trees, and of the PostgreSQL backends of a database."""

from __future__ import annotations

import contextlib

import psutil


def cpu(proc: psutil.Process) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its children."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return cpu(root) + sum(cpu(c) for c in root.children(recursive=True))
    return 0.0


class PostgresMeter:
    """CPU of the PostgreSQL backends whose command line names ``needle`` (a database): those that ended too, as
    last sampled (call :meth:`read` often enough, e.g. every 0.25 s, to catch short-lived backends)."""

    def __init__(self, needle: str | None) -> None:
        self.needle = needle
        self.seen: dict[int, float] = {}

    def read(self) -> float:
        if self.needle:
            for p in psutil.process_iter(["cmdline"]):
                if self.needle in " ".join(p.info["cmdline"] or ()):
                    self.seen[p.pid] = max(self.seen.get(p.pid, 0.0), cpu(p))
        return sum(self.seen.values())
