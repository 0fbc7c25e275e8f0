"""Request plumbing: request ids, version headers, strict JSON bodies, CORS."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse, JSONResponse
from sanic.response.types import HEADER_TRANSLATION_TABLE

from comfyflow import __version__
from comfyflow.errors import ComfyflowError, ValidationError

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_DEPTH = 32


class BadBody(ComfyflowError):
    """Raised when a body is not acceptable JSON (malformed, NaN, too deep)."""

    code = "BAD_REQUEST"


class UnsupportedMediaType(ComfyflowError):
    """Raised when a body is sent with a content type the route does not take."""

    code = "UNSUPPORTED_MEDIA_TYPE"


class TooLarge(ComfyflowError):
    """Raised when a body is bigger than the route allows."""

    code = "PAYLOAD_TOO_LARGE"


def assign_request_id(request: Request) -> None:
    """Take a well-formed X-Request-ID from the client, or make one."""
    given = request.headers.get("x-request-id", "")
    request.ctx.request_id = given if given and REQUEST_ID.match(given) else os.urandom(16).hex()


def add_headers(request: Request, response: HTTPResponse) -> None:
    rid = getattr(request.ctx, "request_id", None) or os.urandom(16).hex()
    headers = response.headers
    headers["X-Request-ID"] = rid
    headers["X-Comfyflow-Version"] = __version__
    headers["X-API-Version"] = "v1"
    extra = getattr(request.ctx, "extra_headers", None)
    if extra:
        for name, value in extra.items():
            headers[name] = value


class FastJSONResponse(JSONResponse):
    """A JSON response whose headers are checked for CR, LF and NUL with one C call each before Sanic's removal
    of them runs: Sanic strips them from every header name and value with ``str.translate`` (about 1 us each;
    ~15 us for the 8 headers of a job response, 3% of a submit's CPU). The headers sent are the same."""

    __slots__ = ()

    @staticmethod
    def _sanitize_header_value(value: str) -> str:
        # isprintable() is False for CR, LF and NUL (and other characters): only then is the slow removal needed
        return value if value.isprintable() else value.translate(HEADER_TRANSLATION_TABLE)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    """``sanic.response.json`` for the hot routes (the app's ``dumps``), as a :class:`FastJSONResponse`."""
    return FastJSONResponse(body, status=status, headers=headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which would be stored as null
        raise ValueError(f"the number {text[:40]} is out of range; send a finite number")
    return value


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object without repeated keys: with the last value silently winning, a body could say one thing to a
    reader (or a proxy that checks the first) and another to us."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def json_body(request: Request, *, max_bytes: int) -> Any:
    """The request's JSON body, strictly: application/json, no NaN/Infinity, no repeated key in an object,
    bounded size and depth.

    Raises:
        UnsupportedMediaType (415), TooLarge (413), BadBody (400), ValidationError (422: a repeated key).
    """
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type is {ctype or 'missing'!r}; send the body as application/json.",
            details={"content_type": ctype},
        )
    body = request.body or b""
    if len(body) > max_bytes:
        raise TooLarge(f"The body has {len(body)} bytes; at most {max_bytes} are accepted.")
    if not body.strip():
        raise BadBody("The body is empty; send a JSON object.")
    try:
        # json.loads(body, ...) with the decoder built once (json.loads builds one per call with these hooks)
        data = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except _DuplicateKey as dup:
        key = dup.key[:100]
        raise ValidationError(
            f"The JSON has the key {key!r} more than once in one object; send each key once.",
            details=[{"field": key, "message": "duplicate key", "type": "duplicate_key"}],
        ) from None
    except RecursionError:
        raise BadBody(f"The JSON is nested too deeply; at most {MAX_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBody(f"The body is not valid JSON: {exc}.") from None
    # a value nests at most as deep as the body has brackets: most bodies need no walk
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise BadBody(f"The JSON is nested too deeply; at most {MAX_DEPTH} levels.")
    if not isinstance(data, dict):
        raise ValidationError(
            "The body must be a JSON object.", details=[{"field": "body", "message": "expected an object"}]
        )
    return data


def query_int(request: Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name}={raw!r} is not an integer.", details=[{"field": name, "value": raw}]) from None
    if not lo <= value <= hi:
        raise ValidationError(f"{name}={value} is out of range {lo}..{hi}.", details=[{"field": name, "value": value}])
    return value
