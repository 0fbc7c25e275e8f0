"""Progress: Server-Sent Events and WebSocket, both reading the job's event stream.

A client that reconnects with ``Last-Event-ID`` (SSE header or ``?last_event_id=``) gets every event it
missed; heartbeats keep proxies from closing idle streams; the stream ends after ``done``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from comfyflow.api.errors import STATUS
from comfyflow.api.jobs import own_job
from comfyflow.errors import ComfyflowError, ValidationError
from comfyflow.models import JobEvent

bp = Blueprint("events")
EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def _last_event_id(request: Request) -> str:
    raw = request.headers.get("last-event-id") or request.args.get("last_event_id") or "0-0"
    if not EVENT_ID.match(raw) or any(int(part) >= 2**64 for part in raw.split("-")):
        raise ValidationError(
            f"Last-Event-ID {raw[:40]!r} is not an event id this API sent (like 1700000000000-0).",
            details=[{"field": "Last-Event-ID", "value": raw[:40]}],
        )
    return raw


async def _pump(request: Request, job_id: str, after: str, send: Callable[[JobEvent | None], Awaitable[None]]) -> None:
    rt = request.app.ctx.rt
    beat = request.app.ctx.settings.sse_heartbeat_seconds
    # short blocking reads: each must end well inside the Redis client's socket timeout (5 s in redis-py 8)
    block_ms = max(1, int(min(beat, 1.0) * 1000))
    loop = asyncio.get_running_loop()
    last_beat = loop.time()
    while True:
        events = await rt.events.read(job_id, after, block_ms=block_ms, count=100)
        if not events:
            job = await rt.store.get(job_id)
            if job is None or job.status.terminal:
                return  # finished, and the client has every event up to its done (written with the state)
            if loop.time() - last_beat >= beat:
                await send(None)
                last_beat = loop.time()
            continue
        for ev in events:
            after = ev.id
            await send(ev)
            if ev.type == "done":
                job = await rt.store.get(job_id)
                if job is None or job.status.terminal:
                    return


@bp.get("/api/v1/jobs/<job_id:str>/events")
async def sse(request: Request, job_id: str) -> HTTPResponse | None:
    await own_job(request, job_id)
    after = _last_event_id(request)
    response = await request.respond(
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

    async def send(ev: JobEvent | None) -> None:
        if ev is None:
            await response.send(": heartbeat\n\n")
        else:
            await response.send(f"id: {ev.id}\nevent: {ev.type}\ndata: {json.dumps(ev.data, default=str)}\n\n")

    await send(None)  # flush headers at once
    await _pump(request, job_id, after, send)
    await response.eof()
    return None


@bp.websocket("/ws/jobs/<job_id:str>")
async def ws(request: Request, websocket, job_id: str) -> None:  # type: ignore[no-untyped-def]
    try:
        await own_job(request, job_id)
        after = _last_event_id(request)
    except ComfyflowError as exc:  # the handshake is done: say why in-band, close with 4000 + the HTTP status
        status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
        error = {**exc.to_dict(), "request_id": getattr(request.ctx, "request_id", None)}
        await websocket.send(json.dumps({"type": "error", "error": error}))
        await websocket.close(code=4000 + status, reason=exc.code)
        return

    async def send(ev: JobEvent | None) -> None:
        payload = {"type": "heartbeat"} if ev is None else ev.model_dump()
        await websocket.send(json.dumps(payload, default=str))

    await _pump(request, job_id, after, send)
    await websocket.close()
