"""The client's event stream survives dropped connections: it reconnects with Last-Event-ID and loses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from comfyflow.client import AsyncClient, NotFoundError, TransportError
from comfyflow.testing.api_server import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/jobs/{job_id}/events", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def frame(event_id: str, kind: str, data: str = "{}") -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n".encode()


async def test_reconnects_with_last_event_id(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if len(seen) == 1:  # the first connection drops in the middle of the stream
            await resp.write(b": heartbeat\n\n" + frame("1-0", "status") + frame("2-0", "progress", '{"value": 0.5}'))
            await resp.write(b"id: 3-0\nevent: prog")
            assert request.transport is not None
            request.transport.abort()
            return resp
        if len(seen) == 2:  # the second ends cleanly but before done (a restarting server)
            await resp.write(frame("3-0", "progress", '{"value": 0.9}'))
            await resp.write_eof()
            return resp
        await resp.write(frame("4-0", "done", '{"status": "succeeded"}'))
        await resp.write_eof()
        return resp

    base = await serve(handler)
    async with AsyncClient(base) as client:
        events = [ev async for ev in client.events("j1")]
    assert [(e.id, e.type) for e in events] == [("1-0", "status"), ("2-0", "progress"), ("3-0", "progress"),
                                                  ("4-0", "done")]  # fmt: skip
    assert events[1].data == {"value": 0.5}
    assert seen == [None, "2-0", "3-0"]


async def test_gives_up_after_repeated_failures_and_never_retries_errors(serve) -> None:  # type: ignore[no-untyped-def]
    calls = 0

    async def broken(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if request.match_info["job_id"] == "gone":
            return web.json_response({"error": {"code": "NOT_FOUND", "message": "No job 'gone'."}}, status=404)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        assert request.transport is not None
        request.transport.abort()
        return resp

    base = await serve(broken)
    async with AsyncClient(base) as client:
        with pytest.raises(TransportError) as exc:
            [ev async for ev in client.events("j1", reconnect=2)]
        assert calls == 3 and exc.value.details["job_id"] == "j1"
        calls = 0
        with pytest.raises(NotFoundError):
            [ev async for ev in client.events("gone")]
        assert calls == 1
