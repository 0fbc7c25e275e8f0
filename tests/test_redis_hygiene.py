"""Tests leave no keys in the machine's Redis: a run of real tests (runtimes, workers, an API server, keys written
after a runtime was closed) ends with none of the key prefixes it made left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from tests.conftest import SERVER_REDIS

ROOT = Path(__file__).resolve().parent.parent
#: Tests that write through every path that leaked keys: a runtime closed by close_runtime (which still writes
#: while closing), an API server with workers, the hypothesis state machine.
SAMPLE = [
    "tests/core/test_e2e.py",
    "tests/api/test_jobs_smoke.py",
    "tests/test_redis_hygiene.py::test_a_late_write_after_the_test_is_removed_too",
]


def test_a_run_leaves_no_keys_of_its_own(tmp_path: Path) -> None:
    log = tmp_path / "prefixes.txt"
    env = {**os.environ, "COMFYFLOW_TEST_PREFIX_LOG": str(log)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *SAMPLE, "-q", "-p", "no:cacheprovider", "-x"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    prefixes = set(log.read_text().split())
    assert len(prefixes) >= 3, "the sample made prefixes"
    client = redis.Redis.from_url(SERVER_REDIS)
    try:
        left = {p: len(list(client.scan_iter(match=f"{p}:*", count=1000))) for p in prefixes}
    finally:
        client.close()
    assert {p: n for p, n in left.items() if n} == {}


def test_a_late_write_after_the_test_is_removed_too(prefix: str, server_redis_url: str) -> None:
    """A key written with no expiry by something the test's own cleanup does not know about."""
    client = redis.Redis.from_url(server_redis_url)
    try:
        client.set(f"{prefix}:late", "written without expiry, after every cleanup of the test itself")
    finally:
        client.close()
