"""A Server-Sent Events parser (the WHATWG event-stream format) over any stream of byte chunks."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

#: A line longer than this is not one the comfyflow API sends; refuse it rather than buffer without end.
MAX_LINE = 8 * 1024 * 1024
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Message:
    """One dispatched event: its ``id`` (the last one seen), ``event`` type and joined ``data`` lines."""

    id: str | None
    event: str
    data: str


async def _lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    buf = b""
    async for chunk in chunks:
        buf += chunk
        pos = 0
        while m := _EOL.search(buf, pos):
            if m.group() == b"\r" and m.end() == len(buf):
                break  # maybe the first half of a CR LF split across chunks
            yield buf[pos : m.start()].decode("utf-8", "replace")
            pos = m.end()
        buf = buf[pos:]
        if len(buf) > MAX_LINE:
            raise ValueError(f"an event-stream line is longer than {MAX_LINE} bytes")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", "replace")


async def parse(chunks: AsyncIterable[bytes]) -> AsyncIterator[Message]:
    """Yield each event of an event stream. Comments (heartbeats) and events without data are skipped."""
    last_id: str | None = None
    event = ""
    data: list[str] = []
    async for line in _lines(chunks):
        if not line:
            if data:
                yield Message(last_id, event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\x00" not in value:
            last_id = value
