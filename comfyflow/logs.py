"""Structured logging: JSON in production, readable in a terminal. Secrets never reach a log line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|token|secret|password|cookie)", re.I)
SECRET_VALUES = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+|(cf_[a-z]+_)[A-Za-z0-9_]+")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if SECRET_KEYS.search(key):
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = SECRET_VALUES.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", value)
    return event


def configure(level: str = "INFO", fmt: str = "console") -> None:
    """Configure structlog and the stdlib root logger once, at the edge (CLI, app factory)."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "prefect.client", "sanic.access"):  # a line per HTTP call is noise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))
