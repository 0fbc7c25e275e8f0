"""Progress streams are bounded: a per-owner cap across API processes (429 above, another owner unaffected), an
idle and a maximum lifetime (the client resumes with Last-Event-ID), and open/ended streams in the metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from comfyflow.models import Role
from comfyflow.testing.metrics import Samples
from tests.api.helpers import error_of, read_sse
from tests.auth.conftest import TINY, auth

FAST = {"free": {"requests_per_minute": 10_000}}


async def _queued_job(http: aiohttp.ClientSession, api: Any, key: str) -> str:
    async with http.post(api.url("/api/v1/jobs"), json=TINY, headers=auth(key)) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["job_id"])


async def _open_sse(http: aiohttp.ClientSession, api: Any, key: str, job_id: str) -> aiohttp.ClientResponse:
    r = await http.get(api.url(f"/api/v1/jobs/{job_id}/events"), headers=auth(key))
    if r.status == 200:
        await r.content.readline()  # the first heartbeat: the stream is open
    return r


async def _metrics(http: aiohttp.ClientSession, api: Any, key: str, **want: float) -> Samples:
    """Scrape until every ``name__label=value`` in ``want`` reads its value (a stream is counted as it ends)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        async with http.get(api.url("/metrics"), headers=auth(key)) as r:
            assert r.status == 200
            scrape = Samples.parse(await r.text())
        seen = {}
        for spec in want:
            name, kind, outcome = [*spec.split("__"), ""][:3]
            labels = {"kind": kind, **({"outcome": outcome} if outcome else {})}
            seen[spec] = scrape.get1(f"comfyflow_event_streams_{name}", **labels)
        if seen == want:
            return scrape
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.1)


async def test_open_streams_are_capped_per_owner_across_processes(auth_api, http) -> None:  # type: ignore[no-untyped-def]
    settings = {"limits": FAST, "streams": {"max_per_owner": 2}, "sse_heartbeat_seconds": 0.5}
    a = await auth_api(run_worker=False, **settings)
    b = await auth_api(run_worker=False, **settings)  # a second API process on the same Redis
    free, internal = await a.key(Role.FREE), await a.key(Role.INTERNAL)
    job, theirs = await _queued_job(http, a, free), await _queued_job(http, a, internal)
    first, second = await _open_sse(http, a, free, job), await _open_sse(http, b, free, job)
    assert first.status == second.status == 200
    third = await _open_sse(http, a, free, job)
    err = await error_of(third, 429, "RATE_LIMIT_EXCEEDED")
    assert err["details"] == {"limit": 2, "scope": "open streams"} and int(third.headers["Retry-After"]) >= 1
    third.release()
    async with http.ws_connect(b.url(f"/ws/jobs/{job}"), headers=auth(free)) as ws:
        msg = json.loads((await ws.receive(timeout=10)).data)
        assert msg["type"] == "error" and msg["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        await ws.receive(timeout=10)
        assert ws.close_code == 4429
    # another owner is not affected
    other = await _open_sse(http, b, internal, theirs)
    assert other.status == 200
    await _metrics(http, a, internal, open__sse=3, total__sse__refused=1, total__ws__refused=1)
    # a closed stream frees its place (the server notices the client left at its next heartbeat)
    first.close()
    deadline = asyncio.get_running_loop().time() + 20
    while (again := await _open_sse(http, b, free, job)).status != 200:
        again.release()
        assert asyncio.get_running_loop().time() < deadline, "the closed stream never freed its place"
        await asyncio.sleep(0.2)
    for r in (second, other, again):
        r.close()


async def test_idle_and_long_streams_are_closed_and_resume(auth_api, http) -> None:  # type: ignore[no-untyped-def]
    api = await auth_api(run_worker=False, limits=FAST, sse_heartbeat_seconds=0.2,
                         streams={"idle_seconds": 1.0, "max_lifetime_seconds": 3600})  # fmt: skip
    internal = await api.key(Role.INTERNAL)
    job = await _queued_job(http, api, internal)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(api.url(f"/api/v1/jobs/{job}/events"), headers=auth(internal)) as r:
        events, beats = await asyncio.wait_for(read_sse(r), timeout=30)  # ends: the server closed it
    assert loop.time() - started >= 1.0 and beats >= 1
    assert [e["event"] for e in events] == ["status"] and events[0]["data"]["status"] == "queued"
    # the client resumes after its last event: nothing is repeated
    last = events[-1]["id"]
    headers = {**auth(internal), "Last-Event-ID": last}
    async with http.get(api.url(f"/api/v1/jobs/{job}/events"), headers=headers) as r:
        again, _ = await asyncio.wait_for(read_sse(r), timeout=30)
    assert again == []
    async with http.ws_connect(api.url(f"/ws/jobs/{job}?last_event_id={last}"), headers=auth(internal)) as ws:
        messages = []
        async for msg in ws:
            messages.append(json.loads(msg.data))
    assert messages[-1] == {"type": "reconnect", "reason": "idle"}
    await _metrics(http, api, internal, total__sse__idle=2, total__ws__idle=1, open__sse=0, open__ws=0)


async def test_a_stream_ends_at_its_maximum_lifetime_even_while_events_flow(auth_api, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 30.0  # progress events keep coming for longer than the stream may live
    api = await auth_api(limits=FAST, sse_heartbeat_seconds=0.2,
                         streams={"idle_seconds": 60, "max_lifetime_seconds": 1.5})  # fmt: skip
    internal = await api.key(Role.INTERNAL)
    job = await _queued_job(http, api, internal)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(api.url(f"/api/v1/jobs/{job}/events"), headers=auth(internal)) as r:
        events, _ = await asyncio.wait_for(read_sse(r), timeout=30)
    assert 1.5 <= loop.time() - started < 25 and "done" not in [e["event"] for e in events]
    await _metrics(http, api, internal, total__sse__lifetime=1)
    async with http.delete(api.url(f"/api/v1/jobs/{job}"), headers=auth(internal)) as r:
        assert r.status in (200, 202)
