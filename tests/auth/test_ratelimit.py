"""Requests per minute: an atomic sliding window in Redis, X-RateLimit-* headers, 429 + Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from redis.asyncio import Redis

from comfyflow.core.keys import Keys
from comfyflow.core.ratelimit import RateLimiter
from comfyflow.models import Role
from tests.auth.conftest import auth


async def test_the_sixth_request_in_a_minute_gets_429(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False)
    key = await api.key(Role.FREE)
    for i in range(5):
        async with http.get(api.url("/api/v1/jobs"), headers=auth(key)) as r:
            assert r.status == 200
            assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("5", str(4 - i))
    async with http.get(api.url("/api/v1/jobs"), headers=auth(key)) as r:
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["X-RateLimit-Remaining"] == "0"
        assert int(r.headers["X-RateLimit-Reset"]) == int(r.headers["Retry-After"])
        error = (await r.json())["error"]
    assert error["code"] == "RATE_LIMIT_EXCEEDED" and error["details"]["limit"] == 5
    other = await api.key(Role.FREE, "someone-else")  # another user has its own window
    async with http.get(api.url("/api/v1/jobs"), headers=auth(other)) as r:
        assert r.status == 200
    second_key_same_user = await api.key(Role.FREE)  # the window is the user's, not the key's
    async with http.get(api.url("/api/v1/jobs"), headers=auth(second_key_same_user)) as r:
        assert r.status == 429


async def test_exactly_the_limit_succeeds_under_50_concurrent_requests(
    auth_api: Any, http: aiohttp.ClientSession
) -> None:
    api = await auth_api(run_worker=False)
    key = await api.key(Role.FREE)

    async def one() -> int:
        async with http.get(api.url("/api/v1/jobs"), headers=auth(key)) as r:
            return r.status

    statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert statuses.count(200) == 5 and statuses.count(429) == 45, statuses


async def test_limits_per_role_and_configurable(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits={"free": {"requests_per_minute": 2}})
    free, internal = await api.key(Role.FREE), await api.key(Role.INTERNAL)
    statuses = []
    for _ in range(3):
        async with http.get(api.url("/api/v1/me"), headers=auth(free)) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 429]
    for _ in range(30):  # INTERNAL: unlimited, so no rate-limit headers either
        async with http.get(api.url("/api/v1/me"), headers=auth(internal)) as r:
            assert r.status == 200 and "X-RateLimit-Limit" not in r.headers


async def test_the_window_slides(redis: Redis, prefix: str) -> None:
    limiter = RateLimiter(redis, Keys(prefix))
    t0 = 1_800_000_000.0
    for i in range(5):
        d = await limiter.hit("alice", 5, now=t0 + i)
        assert d.allowed and d.remaining == 4 - i
    refused = await limiter.hit("alice", 5, now=t0 + 30)
    assert not refused.allowed and refused.remaining == 0 and refused.reset_seconds == 30
    assert (await limiter.hit("alice", 5, now=t0 + 59.999)).allowed is False
    assert (await limiter.hit("alice", 5, now=t0 + 60.001)).allowed  # the first request left the window
    assert not (await limiter.hit("alice", 5, now=t0 + 60.5)).allowed  # refused ones were never counted
    assert (await limiter.hit("bob", 5, now=t0 + 30)).allowed


async def test_the_server_clock_is_used_by_default(redis: Redis, prefix: str) -> None:
    limiter = RateLimiter(redis, Keys(prefix), window_seconds=1.0)
    results = [await limiter.hit("alice", 2) for _ in range(3)]
    assert [d.allowed for d in results] == [True, True, False]
    await asyncio.sleep(1.05)
    assert (await limiter.hit("alice", 2)).allowed
    assert await redis.pttl(Keys(prefix).ratelimit("alice")) <= 1000
