"""Throttling before authentication, per client address, in Redis: refused credentials and requests without
credentials get 429 + Retry-After above their limits, across API processes; valid keys are not slowed."""

from __future__ import annotations

from typing import Any

import aiohttp
from comfyflow_apikey.keys import new_key

from comfyflow.models import Role
from tests.api.helpers import error_of
from tests.auth.conftest import auth

FAST = {"free": {"requests_per_minute": 10_000}}


def _unknown_key() -> str:
    """Well formed (right prefix and checksum), so it costs a key lookup, but in no store."""
    return new_key()[0]


async def test_refused_credentials_from_one_address_get_429_across_processes(auth_api: Any, http: aiohttp.ClientSession) -> None:  # noqa: E501
    limits = {"throttle": {"auth_failures_per_minute": 3, "anonymous_per_minute": 0}, "limits": FAST}
    a = await auth_api(run_worker=False, **limits)
    b = await auth_api(run_worker=False, **limits)  # a second API process on the same Redis
    free, internal = await a.key(Role.FREE), await a.key(Role.INTERNAL)
    for _ in range(3):
        async with http.get(a.url("/api/v1/jobs"), headers=auth(_unknown_key())) as r:
            await error_of(r, 401, "UNAUTHORIZED")
    async with http.get(a.url("/api/v1/jobs"), headers=auth(_unknown_key())) as r:
        err = await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert err["details"] == {"limit": 3, "window_seconds": 60, "scope": "client address"}
    # process A refuses the address before looking at any credential: a valid key waits out the window too
    async with http.get(a.url("/api/v1/jobs"), headers=auth(free)) as r:
        await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
    # process B: a valid key costs nothing here; a refused one is counted in the same window, so 429 at once
    async with http.get(b.url("/api/v1/jobs"), headers=auth(internal)) as r:
        assert r.status == 200
    async with http.get(b.url("/api/v1/jobs"), headers=auth(_unknown_key())) as r:
        await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
        assert int(r.headers["Retry-After"]) >= 1
    async with http.get(b.url("/api/v1/jobs"), headers=auth(internal)) as r:
        await error_of(r, 429, "RATE_LIMIT_EXCEEDED")


async def test_requests_without_credentials_are_limited_per_address(auth_api: Any, http: aiohttp.ClientSession) -> None:
    a = await auth_api(run_worker=False, throttle={"anonymous_per_minute": 4, "auth_failures_per_minute": 100})
    key = await a.key(Role.INTERNAL)
    for path in ("/healthz", "/ping", "/api/v1/jobs", "/openapi.json"):
        async with http.get(a.url(path)) as r:
            assert r.status in (200, 401), (path, r.status)
    async with http.get(a.url("/healthz")) as r:
        await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    # a garbage Authorization header does not make a public probe "authenticated"
    async with http.get(a.url("/readyz"), headers={"Authorization": "Bearer nothing"}) as r:
        await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
    # an authenticated caller from the same address is not counted against it
    for _ in range(5):
        async with http.get(a.url("/api/v1/jobs"), headers=auth(key)) as r:
            assert r.status == 200
    # the counters expire with their window (nothing is left behind without a TTL)
    redis = a.store.redis
    keys = [k async for k in redis.scan_iter(match=f"{a.settings.key_prefix}:throttle:*")]
    assert keys and all(0 < ttl <= 60 for ttl in [await redis.ttl(k) for k in keys])


async def test_nothing_is_throttled_with_auth_off(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, auth="none", throttle={"anonymous_per_minute": 1})
    for _ in range(5):
        async with http.get(api.url("/healthz")) as r:
            assert r.status == 200


async def test_behind_a_proxy_each_forwarded_client_has_its_own_count(auth_api: Any, http: aiohttp.ClientSession) -> None:  # noqa: E501
    a = await auth_api(run_worker=False, throttle={"anonymous_per_minute": 2, "proxies_count": 1})
    for client in ("203.0.113.7", "2001:db8:1:2::5"):
        for _ in range(2):
            async with http.get(a.url("/healthz"), headers={"X-Forwarded-For": client}) as r:
                assert r.status == 200, client
        async with http.get(a.url("/healthz"), headers={"X-Forwarded-For": client}) as r:
            await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
    # IPv6 clients are counted per /64: a neighbour in the same network shares the count
    async with http.get(a.url("/healthz"), headers={"X-Forwarded-For": "2001:db8:1:2::99"}) as r:
        await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
    async with http.get(a.url("/healthz"), headers={"X-Forwarded-For": "198.51.100.1"}) as r:
        assert r.status == 200
