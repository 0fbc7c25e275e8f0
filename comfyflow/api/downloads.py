"""Artifact downloads, streamed: read and sent in chunks (a Range too), never the whole object in memory, and at
most ``COMFYFLOW_MAX_CONCURRENT_DOWNLOADS`` at once per API process (503 + Retry-After above)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse

from comfyflow.errors import Overloaded
from comfyflow.plugins.protocols import StoredObject

CHUNK_BYTES = 1024 * 1024
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: How long a download waits for a free place before the answer is 503.
QUEUE_SECONDS = 2.0


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range: bytes=a-b`` header asks of an object of ``size`` bytes, or None
    when it cannot be satisfied."""
    m = RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        start, end = max(0, size - int(m.group(2))), size - 1
    if start >= size or start > end:
        return None
    return start, end


def limiter(request: Request) -> asyncio.Semaphore:
    """This process's download places (made on first use, on the server's loop)."""
    ctx = request.app.ctx
    sem = getattr(ctx, "downloads", None)
    if sem is None:
        sem = ctx.downloads = asyncio.Semaphore(ctx.settings.max_concurrent_downloads)
    return sem  # type: ignore[no-any-return]


async def send(request: Request, key: str, info: StoredObject, headers: dict[str, str]) -> HTTPResponse | None:
    """Answer with the object (200) or the asked range (206 / 416), streamed in chunks."""
    size = info.size
    ctype = info.content_type or "application/octet-stream"
    status, start, end = 200, 0, size - 1
    rng = request.headers.get("range")
    if rng:
        asked = parse_range(rng, size)
        if asked is None:
            return HTTPResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        status, (start, end) = 206, asked
        headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
    headers = {**headers, "Content-Length": str(max(0, end - start + 1))}
    if request.method == "HEAD" or size == 0:
        return HTTPResponse(status=status, headers=headers, content_type=ctype)
    sem = limiter(request)
    try:
        await asyncio.wait_for(sem.acquire(), timeout=QUEUE_SECONDS)
    except TimeoutError:
        limit = request.app.ctx.settings.max_concurrent_downloads
        raise Overloaded(
            f"{limit} downloads are being served at once, the most this server allows "
            "(COMFYFLOW_MAX_CONCURRENT_DOWNLOADS); retry in a moment.",
            retry_after=1.0,
            details={"limit": limit},
        ) from None
    try:
        storage: Any = request.app.ctx.rt.storage
        first = await storage.read_range(key, start, min(end + 1, start + CHUNK_BYTES))
        response = await request.respond(status=status, headers=headers, content_type=ctype)
        await response.send(first)
        offset = start + len(first)
        while offset <= end and first:
            first = await storage.read_range(key, offset, min(end + 1, offset + CHUNK_BYTES))
            await response.send(first)
            offset += len(first)
        await response.eof()
    finally:
        sem.release()
    return None
