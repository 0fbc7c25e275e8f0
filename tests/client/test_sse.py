"""The client's event-stream parser, fed byte chunks split at awkward places."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from comfyflow.client import sse
from comfyflow.client.errors import GenerationTimeout, ServerError, ValidationFailed, error_from_response

STREAM = (
    b": heartbeat\n\n"
    b'id: 1-0\nevent: status\ndata: {"status": "queued"}\n\n'
    b'id: 2-0\r\nevent: progress\r\ndata: {"value": 0.5,\r\ndata:  "phase": "rendering"}\r\n\r\n'
    b": heartbeat\r\r"
    b'event: done\rid: 3-0\rdata:{"status": "succeeded"}\r\r'
    b"data: no id keeps the last\n\n"
    b"event: ignored-without-data\n\n"
    b"id: 4-0\ndata: \xf0\x9f\x98\x80 emoji\n\n"
    b"data: unfinished"
)


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
async def test_parse_any_chunking(size: int) -> None:
    got = [m async for m in sse.parse(chunks(STREAM, size))]
    assert got == [
        sse.Message("1-0", "status", '{"status": "queued"}'),
        sse.Message("2-0", "progress", '{"value": 0.5,\n "phase": "rendering"}'),
        sse.Message("3-0", "done", '{"status": "succeeded"}'),
        sse.Message("3-0", "message", "no id keeps the last"),
        sse.Message("4-0", "message", "😀 emoji"),
    ], "an event not ended by a blank line is dropped at the end of the stream, as the spec says"


async def test_overlong_line_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "MAX_LINE", 100)
    with pytest.raises(ValueError, match="longer than"):
        [m async for m in sse.parse(chunks(b"data: " + b"x" * 1000, 50))]


def test_error_from_response_reads_the_envelope() -> None:
    body = b'{"error": {"code": "VALIDATION_ERROR", "message": "width: too big", "details": [{"field": "width"}],' \
           b' "request_id": "r1", "timestamp": "t"}}'  # fmt: skip
    exc = error_from_response(422, body, {"X-Request-ID": "r1"})
    assert isinstance(exc, ValidationFailed) and exc.details == [{"field": "width"}] and exc.request_id == "r1"
    timeout = error_from_response(504, b'{"error": {"code": "GENERATION_TIMEOUT", "message": "m", "details": '
                                       b'{"job_id": "j1"}}}', {})  # fmt: skip
    assert isinstance(timeout, GenerationTimeout) and timeout.job_id == "j1"
    proxy = error_from_response(502, b"<html>Bad Gateway</html>", {"Retry-After": "7"})
    assert isinstance(proxy, ServerError) and proxy.code == "HTTP_502" and "Bad Gateway" in proxy.message
    assert proxy.retry_after == 7
