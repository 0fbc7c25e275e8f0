"""The per-process principal cache: a key is looked up in Redis at most once a second, and a revocation still
takes effect within that second (at once when made through the same process)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from comfyflow_apikey.keys import parse_key

from comfyflow.api.auth_cache import PrincipalCache
from comfyflow.models import Principal, Role
from tests.auth.conftest import auth

ALICE = Principal(id="u_alice", role=Role.PRO, key_id="k1")


def test_a_principal_is_reused_within_the_ttl_only() -> None:
    now = [100.0]
    cache = PrincipalCache(1.0, clock=lambda: now[0])
    assert cache.get("Bearer a") is None
    cache.put("Bearer a", ALICE)
    assert cache.get("Bearer a") == ALICE
    assert cache.get("Bearer b") is None, "another credential is another entry"
    now[0] += 0.999
    assert cache.get("Bearer a") == ALICE
    now[0] += 0.002
    assert cache.get("Bearer a") is None, "expired after the ttl"
    assert len(cache) == 0
    cache.put("Bearer a", ALICE)
    cache.clear()
    assert cache.get("Bearer a") is None


def test_the_cache_is_bounded_and_holds_no_credential() -> None:
    cache = PrincipalCache(60.0, max_entries=3)
    for i in range(5):
        cache.put(f"Bearer secret-{i}", ALICE)
    assert len(cache) == 3
    assert cache.get("Bearer secret-0") is None and cache.get("Bearer secret-4") == ALICE
    assert not any(b"secret" in key for key in cache._entries)


async def test_a_key_revoked_elsewhere_stops_working_within_the_ttl(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits={"pro": {"requests_per_minute": None}})
    key = await api.key(Role.PRO, "alice")
    lookups = 0
    plugin = api.app.ctx.policy.plugins[0]
    original = plugin.authenticate

    async def counting(headers: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return await original(headers)

    plugin.authenticate = counting
    for _ in range(20):
        async with http.get(api.url("/api/v1/me"), headers=auth(key)) as r:
            assert r.status == 200
    assert 1 <= lookups < 20, f"{lookups} key lookups for 20 requests: the principal is not reused"

    # revoked through another process (the test's own key store): refused once the cached principal expires
    await api.store.revoke_key(parse_key(key).key_id)  # type: ignore[union-attr]
    revoked_at = time.monotonic()
    deadline = revoked_at + 10
    while True:
        async with http.get(api.url("/api/v1/me"), headers=auth(key)) as r:
            if r.status == 401:
                break
            assert r.status == 200
        assert time.monotonic() < deadline, "a revoked key still works after 10 s"
        await asyncio.sleep(0.05)
    assert api.app.ctx.policy.principals.ttl <= 1.0


async def test_a_key_revoked_through_this_process_stops_at_once(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits={"pro": {"requests_per_minute": None}})
    key, other = await api.key(Role.PRO, "alice"), await api.key(Role.PRO, "alice")
    async with http.get(api.url("/api/v1/me"), headers=auth(other)) as r:
        assert r.status == 200  # cached now
    other_id = parse_key(other).key_id  # type: ignore[union-attr]
    async with http.delete(api.url(f"/api/v1/keys/{other_id}"), headers=auth(key)) as r:
        assert r.status == 200
    async with http.get(api.url("/api/v1/me"), headers=auth(other)) as r:
        assert r.status == 401
