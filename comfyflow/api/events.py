"""Progress: Server-Sent Events and WebSocket, both reading the job's event stream.

A client that reconnects with ``Last-Event-ID`` (SSE header or ``?last_event_id=``) gets every event it
missed; heartbeats keep proxies from closing idle streams; the stream ends after ``done``.

Streams are bounded (``COMFYFLOW_STREAMS__...``): an owner has at most ``max_per_owner`` open across the API
processes (429 above, leases in Redis: comfyflow/core/streams.py), and the server closes a stream that carried
no job event for ``idle_seconds`` or has been open ``max_lifetime_seconds``; the client resumes with
Last-Event-ID. Each stream's end is counted (``comfyflow_event_streams_total``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from comfyflow import metrics as m
from comfyflow.api.errors import STATUS
from comfyflow.api.jobs import own_job
from comfyflow.core.streams import StreamLeases
from comfyflow.errors import ComfyflowError, RateLimited, ValidationError
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


async def _pump(request: Request, job_id: str, after: str, send: Callable[[JobEvent | None], Awaitable[None]],
                renew: Callable[[], Awaitable[None]]) -> str:  # fmt: skip
    """Send the job's events after ``after`` until it ends; returns why the stream ended (done, idle, lifetime)."""
    rt = request.app.ctx.rt
    settings = request.app.ctx.settings
    beat = settings.sse_heartbeat_seconds
    # short blocking reads: each must end well inside the Redis client's socket timeout (5 s in redis-py 8)
    block_ms = max(1, int(min(beat, 1.0) * 1000))
    loop = asyncio.get_running_loop()
    opened = last_beat = last_event = last_renew = loop.time()
    while True:
        now = loop.time()
        if now - opened >= settings.streams.max_lifetime_seconds:
            return "lifetime"
        if now - last_event >= settings.streams.idle_seconds:
            return "idle"
        if now - last_renew >= StreamLeases.RENEW_SECONDS:
            await renew()
            last_renew = now
        events = await rt.events.read(job_id, after, block_ms=block_ms, count=100)
        if not events:
            job = await rt.store.get(job_id)
            if job is None or job.status.terminal:
                return "done"  # finished, and the client has every event up to its done (written with the state)
            if loop.time() - last_beat >= beat:
                await send(None)
                last_beat = loop.time()
            continue
        last_event = loop.time()
        for ev in events:
            after = ev.id
            await send(ev)
            if ev.type == "done":
                job = await rt.store.get(job_id)
                if job is None or job.status.terminal:
                    return "done"


class _Bounded:
    """One open stream: its lease under the owner's cap, renewed while open, released and counted at the end."""

    def __init__(self, request: Request, kind: str) -> None:
        self.rt = request.app.ctx.rt
        self.cap = request.app.ctx.settings.streams.max_per_owner
        self.leases = StreamLeases(self.rt.redis, self.rt.store.keys.prefix)
        self.owner = request.ctx.principal.id
        self.kind = kind
        self.token: str | None = None
        self.outcome = "closed"

    async def open(self) -> None:
        """Raises RateLimited (429) when the owner has ``max_per_owner`` streams open already."""
        self.token = await self.leases.open(self.owner, self.kind, self.cap)
        if self.token is None:
            self.rt.metrics.add(m.STREAMS, self.kind, "refused")
            raise RateLimited(
                f"You have {self.cap} progress streams open, the most allowed (COMFYFLOW_STREAMS__MAX_PER_OWNER); "
                "close one, or poll GET /api/v1/jobs/{id}.",
                retry_after=5.0,
                details={"limit": self.cap, "scope": "open streams"},
            )

    async def renew(self) -> None:
        if self.token is not None:
            await self.leases.renew(self.owner, self.kind, self.token)

    async def close(self) -> None:
        token, self.token = self.token, None
        if token is not None:
            self.rt.metrics.add(m.STREAMS, self.kind, self.outcome)
            # shielded: Sanic cancels a WebSocket handler once the socket closes; the lease must go all the same
            await asyncio.shield(self.leases.close(self.owner, self.kind, token))


@bp.get("/api/v1/jobs/<job_id:str>/events")
async def sse(request: Request, job_id: str) -> HTTPResponse | None:
    await own_job(request, job_id)
    after = _last_event_id(request)
    stream = _Bounded(request, "sse")
    await stream.open()
    try:
        response = await request.respond(
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    except BaseException:
        await stream.close()
        raise

    async def send(ev: JobEvent | None) -> None:
        if ev is None:
            await response.send(": heartbeat\n\n")
        else:
            await response.send(f"id: {ev.id}\nevent: {ev.type}\ndata: {json.dumps(ev.data, default=str)}\n\n")

    try:
        await send(None)  # flush headers at once
        stream.outcome = await _pump(request, job_id, after, send, stream.renew)
        await response.eof()
    finally:
        await stream.close()
    return None


@bp.websocket("/ws/jobs/<job_id:str>")
async def ws(request: Request, websocket, job_id: str) -> None:  # type: ignore[no-untyped-def]
    stream = _Bounded(request, "ws")
    try:
        await own_job(request, job_id)
        after = _last_event_id(request)
        await stream.open()
    except ComfyflowError as exc:  # the handshake is done: say why in-band, close with 4000 + the HTTP status
        status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
        error = {**exc.to_dict(), "request_id": getattr(request.ctx, "request_id", None)}
        await websocket.send(json.dumps({"type": "error", "error": error}))
        await websocket.close(code=4000 + status, reason=exc.code)
        return

    async def send(ev: JobEvent | None) -> None:
        payload = {"type": "heartbeat"} if ev is None else ev.model_dump()
        await websocket.send(json.dumps(payload, default=str))

    try:
        stream.outcome = await _pump(request, job_id, after, send, stream.renew)
        await stream.close()
        if stream.outcome in ("idle", "lifetime"):  # say so, then close: the client resumes with last_event_id
            await websocket.send(json.dumps({"type": "reconnect", "reason": stream.outcome}))
        await websocket.close()
    finally:
        await stream.close()
