"""Prefect's CLI (``comfyflow-prefect server start ...``), with timestamps bound to PostgreSQL as plain datetimes.

On Python < 3.13 Prefect's server keeps its timestamps as pendulum ``DateTime`` objects and hands them to asyncpg
as they are; asyncpg encodes a timestamp by subtracting its epoch, which pendulum turns into an ``Interval``
(calendar arithmetic): ~235 us a value against ~2 us for a stdlib datetime. Every event Prefect persists carries a
timestamp per related resource, so at comfyflow's ~100 bound timestamps a generation that was about a quarter of
the Prefect server's CPU (py-spy, benchmarks/PREFECT_PROFILE.md). Binding the same instant as a stdlib datetime
in UTC changes nothing stored. On Python 3.13+ Prefect uses stdlib datetimes itself and this adds nothing.
"""

from __future__ import annotations

import datetime
import sys
from typing import Any

UTC = datetime.UTC


def plain_utc(value: datetime.datetime) -> datetime.datetime:
    """The same instant as a stdlib ``datetime`` in UTC (``value`` must be aware)."""
    plain = datetime.datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
        value.tzinfo, fold=value.fold,
    )  # fmt: skip
    return plain.astimezone(UTC)


def bind_plain_timestamps() -> None:
    """Make Prefect's ``Timestamp`` column type bind plain UTC datetimes (idempotent; before any engine exists)."""
    from prefect.server.utilities.database import Timestamp

    original = Timestamp.process_bind_param
    if getattr(original, "_comfyflow_plain", False):
        return

    def process_bind_param(self: Any, value: datetime.datetime | None, dialect: Any) -> datetime.datetime | None:
        bound = original(self, value, dialect)
        return plain_utc(bound) if bound is not None and type(bound) is not datetime.datetime else bound

    process_bind_param._comfyflow_plain = True  # type: ignore[attr-defined]
    Timestamp.process_bind_param = process_bind_param  # type: ignore[method-assign]


def main() -> None:
    """Run Prefect's CLI with :func:`bind_plain_timestamps` applied (on Python < 3.13)."""
    if sys.version_info < (3, 13):
        bind_plain_timestamps()
    from prefect.cli import app

    app()


if __name__ == "__main__":
    main()
