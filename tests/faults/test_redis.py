"""Redis faults: restarted without persistence (consumer groups lost), stopped and restarted with its AOF,
and a Redis that accepts connections but never answers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from redis import exceptions as redis_errors

from comfyflow.core.runtime import Runtime
from comfyflow.core.worker import Worker
from tests.api.helpers import TERMINAL, tiny


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any], Any]:
    async with http.get(url) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def _poll_job(http: aiohttp.ClientSession, base: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, _, body = await _get(http, f"{base}/api/v1/jobs/{job_id}")
        assert status in (200, 503), (status, body)  # 503 while Redis reconnects; never a 500
        if status == 200 and body["status"] in TERMINAL:
            return dict(body)
        assert loop.time() < deadline, f"job {job_id} never finished: {status} {body}"
        await asyncio.sleep(0.1)


async def test_redis_restarted_without_persistence_heals(
    redis_process, api_on, http, make_settings, fake
) -> None:  # type: ignore[no-untyped-def]
    redis = redis_process(persistent=False)
    base = await api_on(redis.url, run_worker=False)  # the API alone: it must not heal by luck of a worker
    async with http.post(f"{base}/api/v1/jobs", json=tiny()) as r:
        assert r.status == 202
        lost_id = (await r.json())["job_id"]

    redis.kill()
    redis.start()  # empty: the job, the queue streams and their consumer group are gone

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:  # the API's client reconnects; meanwhile it answers 503, never 500
        status, headers, body = await _get(http, f"{base}/api/v1/jobs/{lost_id}")
        if status != 503:
            break
        assert "Retry-After" in headers
        assert loop.time() < deadline
        await asyncio.sleep(0.1)
    assert status == 404, body  # lost with Redis' data
    async with http.post(f"{base}/api/v1/jobs", json=tiny()) as r:
        assert r.status == 202, await r.text()
        job_id = (await r.json())["job_id"]  # its XADD made a queue stream without the consumer group

    for _ in range(300):  # /readyz answers from a state refreshed in the background: within seconds
        status, headers, body = await _get(http, f"{base}/readyz")
        if status == 503 and body.get("status") == "degraded":
            break
        await asyncio.sleep(0.1)
    assert status == 503 and body["status"] == "degraded", body
    assert any("consumer group" in reason for reason in body["reasons"]), body
    assert headers.get("Retry-After")

    rt = await Runtime.open(make_settings(redis_url=redis.url, backends=[fake.url]), redis.url)
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(rt, concurrency=2).run(stop, grace=2))
    try:
        done = await _poll_job(http, base, job_id, timeout=30)
        assert done["status"] == "succeeded", done
        for _ in range(300):
            status, _, body = await _get(http, f"{base}/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and body["status"] == "ready", body
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        await rt.aclose()


async def test_redis_down_answers_503_then_every_accepted_job_completes(
    redis_process, api_on, http, fake
) -> None:  # type: ignore[no-untyped-def]
    redis = redis_process(persistent=True)
    fake.render_time = 0.3
    base = await api_on(redis.url, run_worker=True, lease_seconds=2.0, max_attempts=5)
    accepted = []
    for i in range(6):
        async with http.post(f"{base}/api/v1/jobs", json=tiny(seed=i)) as r:
            assert r.status == 202
            accepted.append((await r.json())["job_id"])
    for _ in range(200):  # some are running when Redis goes away
        if fake.prompts_posted:
            break
        await asyncio.sleep(0.02)

    redis.kill()
    loop = asyncio.get_running_loop()
    down_since = loop.time()
    answers = 0
    while answers < 3 or loop.time() - down_since < 4.0:  # Redis stays down at least 4 s and 3 answers
        started = loop.time()
        status, headers, body = await _get(http, f"{base}/api/v1/jobs/{accepted[0]}")
        assert status == 503, (status, body)
        assert body["error"]["code"] == "BACKEND_UNAVAILABLE" and int(headers["Retry-After"]) >= 1
        assert loop.time() - started < 15, "a request hung on the dead Redis"
        async with http.post(f"{base}/api/v1/jobs", json=tiny()) as r:
            assert r.status == 503 and r.headers["Retry-After"], await r.text()
        answers += 1
        assert loop.time() - down_since < 60, "requests are far too slow while Redis is down"
        await asyncio.sleep(0.2)
    redis.start()  # with its AOF: every accepted job is still there

    for job_id in accepted:
        done = await _poll_job(http, base, job_id, timeout=90)
        assert done["status"] == "succeeded", done


async def test_every_redis_call_is_bounded_by_timeouts(make_settings) -> None:  # type: ignore[no-untyped-def]
    """A Redis that accepts connections but never answers (a hung server, a half-open network path): opening the
    runtime fails with a Redis timeout within its bounds instead of hanging. (A guard: redis-py 8 defaults to 5 s
    timeouts, which comfyflow now sets explicitly from its settings; this fails if a client is made without.)"""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        settings = make_settings(redis_url=url, redis_socket_timeout_seconds=1.5, redis_connect_timeout_seconds=1.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            rt = await asyncio.wait_for(Runtime.open(settings, url), timeout=30)
        except (redis_errors.TimeoutError, redis_errors.ConnectionError):
            pass
        else:
            await rt.aclose()
            raise AssertionError("a silent Redis answered")
        assert loop.time() - started < 15
