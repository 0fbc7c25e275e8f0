"""``comfyflow-prefect``: Prefect's CLI whose server binds timestamps to PostgreSQL as plain UTC datetimes."""

from __future__ import annotations

import datetime
import subprocess
import sys

from prefect.server.utilities.database import Timestamp
from prefect.types._datetime import now
from sqlalchemy.dialects import postgresql

from comfyflow.embedded.prefect import prefect_executable
from comfyflow.embedded.prefect_main import bind_plain_timestamps, plain_utc


def test_plain_utc_is_the_same_instant_as_a_stdlib_datetime() -> None:
    value = now("Europe/Paris")
    plain = plain_utc(value)
    assert type(plain) is datetime.datetime and plain.tzinfo is datetime.UTC
    assert plain == value and plain.timestamp() == value.timestamp()


def test_the_patched_column_type_binds_stdlib_datetimes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(Timestamp, "process_bind_param", Timestamp.process_bind_param)  # undone after the test
    bind_plain_timestamps()
    bind_plain_timestamps()  # idempotent
    dialect = postgresql.dialect()
    value = now("UTC")
    if sys.version_info < (3, 13):
        assert type(value) is not datetime.datetime, "Prefect's own value is a pendulum DateTime here"
    bound = Timestamp().process_bind_param(value, dialect)
    assert type(bound) is datetime.datetime and bound == value
    assert Timestamp().process_bind_param(None, dialect) is None
    naive = datetime.datetime(2026, 1, 1)
    try:
        Timestamp().process_bind_param(naive, dialect)
    except ValueError as exc:  # Prefect's own check still runs first
        assert "timezone" in str(exc)
    else:
        raise AssertionError("a naive timestamp was bound")


def test_comfyflow_runs_prefect_through_it() -> None:
    """The embedded and test servers start through it (every Prefect test exercises the patched binding)."""
    argv = prefect_executable()
    assert argv == [sys.executable, "-m", "comfyflow.embedded.prefect_main"]
    out = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Version:" in out.stdout, out.stderr
