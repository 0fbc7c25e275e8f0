"""Progress streams over a real server: SSE (replay with Last-Event-ID, heartbeats, closes after done) and the
WebSocket, both reading the job's event stream."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.api.helpers import error_of, read_sse, submit, tiny, wait_for


async def _all_events(http: aiohttp.ClientSession, base: str, job_id: str) -> list[dict]:
    async with http.get(f"{base}/api/v1/jobs/{job_id}/events") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Request-ID"]
        events, _ = await asyncio.wait_for(read_sse(r), 10)
    return events


async def test_sse_replays_everything_and_closes_after_done(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    job = await submit(http, base, tiny(steps=4))
    await wait_for(http, base, job["job_id"])
    events = await _all_events(http, base, job["job_id"])  # returns only because the server ends the stream
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and events[0]["data"]["status"] == "queued"
    assert {"status", "progress", "done"} <= set(kinds) and kinds[-1] == "done" and kinds.count("done") == 1
    assert events[-1]["data"]["status"] == "succeeded"
    assert [e["data"]["status"] for e in events if e["event"] == "status"][:2] == ["queued", "running"]
    values = [e["data"]["value"] for e in events if e["event"] == "progress"]
    assert values == sorted(values) and all(0 <= v <= 1 for v in values)
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)

    # resume after the third event: exactly the rest, by header and by query parameter
    after = ids[2]
    async with http.get(f"{base}/api/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": after}) as r:
        rest, _ = await asyncio.wait_for(read_sse(r), 10)
    assert rest == events[3:]
    async with http.get(f"{base}/api/v1/jobs/{job['job_id']}/events", params={"last_event_id": after}) as r:
        assert (await asyncio.wait_for(read_sse(r), 10))[0] == events[3:]
    # resuming after the last event of a finished job sends nothing more, and closes
    async with http.get(f"{base}/api/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": ids[-1]}) as r:
        assert r.status == 200
        tail = await asyncio.wait_for(r.read(), 30)
    assert b"event:" not in tail

    for bad in ("yesterday", "1-2-3", "9" * 30, "-1-0", "99999999999999999999-0", "1-18446744073709551616"):
        async with http.get(f"{base}/api/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": bad}) as r:
            err = await error_of(r, 422, "VALIDATION_ERROR")
            assert err["details"][0]["field"] == "Last-Event-ID"


async def test_sse_reconnect_mid_job_misses_nothing(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 1.0
    base = await api_factory(sse_heartbeat_seconds=0.2)
    job = await submit(http, base, tiny(steps=10))
    url = f"{base}/api/v1/jobs/{job['job_id']}/events"
    async with http.get(url) as r:
        first, _ = await asyncio.wait_for(read_sse(r, stop_after=3), 10)
    # the client dropped the connection while the job was running; it comes back with the last id it saw
    async with http.get(url, headers={"Last-Event-ID": first[-1]["id"]}) as r:
        second, beats = await asyncio.wait_for(read_sse(r), 15)
    assert second and second[-1]["event"] == "done" and second[-1]["data"]["status"] == "succeeded"
    assert beats >= 1, "a heartbeat comment flushes the headers at once"
    assert first + second == await _all_events(http, base, job["job_id"])


async def test_sse_stays_open_through_quiet_periods_then_cancel_ends_it(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    # longer than the Redis client's 5 s socket timeout: blocking reads must not outlast it
    base = await api_factory(run_worker=False, sse_heartbeat_seconds=0.5)
    job = await submit(http, base)
    lines: list[bytes] = []
    async with http.get(f"{base}/api/v1/jobs/{job['job_id']}/events") as r:
        started = asyncio.get_running_loop().time()
        async for raw in r.content:
            lines.append(raw)
            if asyncio.get_running_loop().time() - started > 6.0:
                break
        async with http.delete(f"{base}/api/v1/jobs/{job['job_id']}") as c:
            assert c.status == 200
        events, _ = await asyncio.wait_for(read_sse(r), 10)
    assert sum(line.startswith(b": heartbeat") for line in lines) >= 10
    assert b"event: status\n" in lines
    assert [e["event"] for e in events] == ["done"] and events[0]["data"]["status"] == "canceled"


async def test_websocket_streams_the_same_events(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 0.5
    base = await api_factory(sse_heartbeat_seconds=0.2)
    ws_base = base.replace("http://", "ws://")
    job = await submit(http, base, tiny(steps=5))
    got = []
    async with http.ws_connect(f"{ws_base}/ws/jobs/{job['job_id']}") as ws:
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT
            got.append(json.loads(msg.data))
        assert ws.close_code == 1000, "the server closes the socket after done"
    events = [m for m in got if m["type"] != "heartbeat"]
    assert events[-1]["type"] == "done" and events[-1]["data"]["status"] == "succeeded"
    sse = await _all_events(http, base, job["job_id"])
    assert [(e["id"], e["type"], e["data"]) for e in events] == [(e["id"], e["event"], e["data"]) for e in sse]

    async with http.ws_connect(f"{ws_base}/ws/jobs/{job['job_id']}?last_event_id={events[1]['id']}") as ws:
        resumed = [json.loads(m.data) async for m in ws]
    assert [m for m in resumed if m["type"] != "heartbeat"] == events[2:]


async def test_websocket_refusals_say_why(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    ws_base = base.replace("http://", "ws://")
    job = await submit(http, base)
    for path, code, close in (
        (f"/ws/jobs/{'0' * 32}", "NOT_FOUND", 4404),
        (f"/ws/jobs/{job['job_id']}?last_event_id=nope", "VALIDATION_ERROR", 4422),
    ):
        async with http.ws_connect(ws_base + path) as ws:
            msgs = [json.loads(m.data) async for m in ws]
            assert ws.close_code == close
        assert msgs[0]["type"] == "error" and msgs[0]["error"]["code"] == code and msgs[0]["error"]["request_id"]
