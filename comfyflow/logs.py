"""Structured logging: JSON in production, readable in a terminal. Secrets never reach a log line.

Context is bound once with :mod:`structlog.contextvars` where it becomes known: the API binds ``request_id``
and ``principal`` per request; the worker binds ``job_id``, ``attempt`` and ``request_id`` (stored on the job at
submit) per attempt, and ``backend`` once a GPU slot is taken. The standard library's loggers (Sanic, Prefect,
aiohttp) go through the same processors, so their lines are JSON and redacted too.

Redaction (``redact``) runs after exceptions are formatted, on every string in the event, nested ones included:
values under secret-looking keys (``authorization``, ``api_key``, ``token``, ``secret``, ``password``, ``cookie``)
and anything shaped like a bearer token, a comfyflow API key (``cf_...``), a webhook secret (``whsec_...``), an
``Authorization:`` header line or a password in a URL. Tracebacks never show local variables.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson
import structlog

SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|token|secret|password|passwd|cookie|credential)", re.I)
REDACTED = "[redacted]"
_VALUE_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)(basic\s+)[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(?i)((?:authorization|x-api-key|api[_-]?key|cookie)\s*[:=]\s*)[^\s\"',;]+"),
    re.compile(r"()\bcf_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"()\bwhsec_[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)"),  # scheme://user:PASSWORD@host
    re.compile(r"(?i)([?&](?:token|sig|signature|key|api_key|access_token)=)[^&\s\"']+"),
]
#: Loggers whose every record is noise at INFO (a line per HTTP request of a client library).
QUIET = ("httpx", "httpcore", "urllib3", "aiohttp.access", "sanic.access")


#: Whether a text could hold anything ``_VALUE_PATTERNS`` replace: one case-insensitive scan (a superset of theirs),
#: so the common line (no secret in it) costs one search instead of seven substitutions.
_MAYBE_SECRET = re.compile("|".join(p.pattern.removeprefix("(?i)") for p in _VALUE_PATTERNS), re.IGNORECASE)


def _clearly_clean(text: str) -> bool:
    """Whether ASCII ``text`` lacks what every one of ``_VALUE_PATTERNS`` needs to match: ``:`` or ``=`` (a header
    line, a URL password, a query parameter), ``cf_``, ``whsec_``, or the words bearer and basic. A few C substring
    scans: the common line (an id, a route path) skips the regular expressions, whose scan cost ~5 us for a
    32-character request id. Other text goes to them (case-insensitive matching also folds a few non-ASCII letters,
    e.g. U+017F into s, which ``lower`` does not)."""
    if not text.isascii() or ":" in text or "=" in text or "cf_" in text or "whsec_" in text:
        return False
    low = text.lower()
    return "bearer" not in low and "basic" not in low


def redact_text(text: str) -> str:
    if _clearly_clean(text) or not _MAYBE_SECRET.search(text):
        return text
    for pattern in _VALUE_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_KEYS.search(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set):
        return [_scrub(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    return value


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: replace secrets in every key and (nested) string value of the event."""
    for key, value in list(event.items()):
        if key == "event":
            event[key] = redact_text(value) if isinstance(value, str) else _scrub(value)
        elif SECRET_KEYS.search(key):
            event[key] = REDACTED
        else:
            event[key] = _scrub(value)
    return event


def resolve_format(fmt: str, stream: IO[str] | None = None) -> str:
    """``auto`` is console when the stream is a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stderr
    return "console" if getattr(stream, "isatty", lambda: False)() else "json"


def _shared(level: str) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,  # a plain traceback string, no locals, redacted below
        structlog.processors.UnicodeDecoder(),
        redact,
    ]


def configure(level: str = "INFO", fmt: str = "auto", *, stream: IO[str] | None = None, cache: bool = False) -> None:
    """Configure structlog and the standard library's root logger once, at the edge (CLI, app factory).

    Args:
        level: DEBUG, INFO, WARNING or ERROR.
        fmt: json, console or auto (console in a terminal, JSON otherwise).
        stream: where lines go (stderr by default).
        cache: cache loggers on first use; off by default, so that configuring again (tests, a command that runs
            another) reaches the module-level loggers that were already used.
    """
    stream = stream or sys.stderr
    fmt = resolve_format(fmt, stream)
    renderer: Any = (
        structlog.processors.JSONRenderer(default=str)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=getattr(stream, "isatty", lambda: False)(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*_shared(level), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=cache,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(level),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("comfyflow")
    global _json_handler
    _json_handler = handler if fmt == "json" else None
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "comfyflow"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, getattr(logging, level)))
    route_framework_loggers()


_json_handler: logging.Handler | None = None
_loggers: dict[str, logging.Logger] = {}  # getLogger takes the logging module's lock on every call


@functools.cache
def _level_name(level: int) -> str:
    return logging.getLevelName(level).lower()


def write_json(
    logger: str, level: int, event: str, fields: dict[str, Any], *, redacted: tuple[str, ...] | None = None
) -> bool:
    """Write one JSON log line straight to comfyflow's handler, without structlog's processor chain: for lines
    logged on every request. The caller passes every field the line needs (no context variables are merged);
    strings are redacted like any line's (only the fields named in ``redacted``, when given: the caller vouches
    that the others are fixed vocabulary or ids). Returns False (write nothing) when logging is not configured for JSON;
    True when the line was written or its level is off.
    """
    handler = _json_handler
    if handler is None or not isinstance(handler, logging.StreamHandler):
        return False
    lg = _loggers.get(logger)
    if lg is None:
        lg = _loggers[logger] = logging.getLogger(logger)
    if not lg.isEnabledFor(level):
        return True
    line = dict(fields)
    for k in fields if redacted is None else redacted:
        v = line.get(k)
        if isinstance(v, str):
            line[k] = redact_text(v)
    line.update(event=event, logger=logger, level=_level_name(level),
                timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"))  # fmt: skip
    text = orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
    handler.acquire()
    try:
        handler.stream.write(text)
    finally:
        handler.release()
    return True


def configured() -> bool:
    return any(h.get_name() == "comfyflow" for h in logging.getLogger().handlers)


def route_framework_loggers() -> None:
    """Send Sanic's loggers and Prefect's console output through comfyflow's handler (when configured).

    Sanic installs its own console handlers each time an app is created; Prefect's run loggers keep their
    API handler, so run logs still reach the Prefect UI.
    """
    if not configured():
        return
    for name in ("sanic.root", "sanic.error", "sanic.server", "sanic.websockets", "sanic.access", "prefect"):
        lg = logging.getLogger(name)
        consoles = [h for h in lg.handlers if isinstance(h, logging.StreamHandler) or "Console" in type(h).__name__]
        for h in consoles:
            lg.removeHandler(h)
        if consoles or name.startswith("sanic"):
            lg.propagate = True


def reset() -> None:
    """Undo :func:`configure` (tests)."""
    global _json_handler
    _json_handler = None
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "comfyflow"]:
        root.removeHandler(old)
    structlog.reset_defaults()
