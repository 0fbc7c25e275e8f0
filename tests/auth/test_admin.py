"""Admin API (INTERNAL keys only, always), self-service keys, the bootstrapped first key, and JWT callers."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.jwk import OctKey

from comfyflow.api.admin import bootstrap_first_key, bootstrap_message
from comfyflow.core.runtime import Runtime
from comfyflow.models import Role
from tests.auth.conftest import TINY, auth

SECRET = "an-hs256-shared-secret-of-40-bytes-long!"
ADMIN_ROUTES = [
    ("GET", "/api/v1/admin/users", None),
    ("POST", "/api/v1/admin/users", {"name": "x", "role": "internal"}),
    ("GET", "/api/v1/admin/users/u_0", None),
    ("PATCH", "/api/v1/admin/users/u_0", {"role": "internal"}),
    ("GET", "/api/v1/admin/users/u_0/keys", None),
    ("POST", "/api/v1/admin/users/u_0/keys", {"name": "x"}),
    ("GET", "/api/v1/admin/keys", None),
    ("DELETE", "/api/v1/admin/keys/k0", None),
]


async def _call(http: aiohttp.ClientSession, api: Any, key: str, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, api.url(path), json=body, headers=auth(key)) as r:
        return r.status, await r.json()


async def test_admin_needs_an_internal_key(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits={"free": {"requests_per_minute": 100}})
    for role in (Role.FREE, Role.PRO):
        key = await api.key(role)
        for method, path, body in ADMIN_ROUTES:
            status, answer = await _call(http, api, key, method, path, body)
            assert status == 403 and answer["error"]["code"] == "FORBIDDEN", (role, method, path, answer)
    assert len(await api.store.list_users()) == 2  # nothing was created


async def test_admin_manages_users_and_keys(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False)
    ops = await api.key(Role.INTERNAL, "ops")
    status, user = await _call(http, api, ops, "POST", "/api/v1/admin/users", {"name": "alice"})
    assert status == 201 and user["role"] == "free" and not user["disabled"]
    status, issued = await _call(http, api, ops, "POST", f"/api/v1/admin/users/{user['id']}/keys",
                                 {"name": "laptop", "expires_in_days": 30})  # fmt: skip
    assert status == 201 and issued["key"].startswith("cf_live_") and issued["expires_at"]
    alice = issued["key"]
    status, me = await _call(http, api, alice, "GET", "/api/v1/me")
    assert status == 200 and (me["id"], me["role"]) == (user["id"], "free")
    status, listed = await _call(http, api, ops, "GET", "/api/v1/admin/keys")
    assert {k["key_id"] for k in listed["items"]} >= {issued["key_id"]}
    assert all("key" not in k and "hash" not in k for k in listed["items"])
    status, users = await _call(http, api, ops, "GET", "/api/v1/admin/users")
    assert {u["name"] for u in users["items"]} == {"ops", "alice"}

    # a role change takes effect at once: the rate limit and the running-job limit follow it
    status, changed = await _call(http, api, ops, "PATCH", f"/api/v1/admin/users/{user['id']}", {"role": "pro"})
    assert status == 200 and changed["role"] == "pro"
    async with http.get(api.url("/api/v1/me"), headers=auth(alice)) as r:
        assert r.headers["X-RateLimit-Limit"] == "20" and (await r.json())["role"] == "pro"
    limits = await api.store.redis.hgetall(f"{api.settings.key_prefix}:owner:{user['id']}:limits")
    assert limits[b"max_running"] == b"3"

    # disabling stops every key of the user; enabling brings them back
    assert (await _call(http, api, ops, "PATCH", f"/api/v1/admin/users/{user['id']}", {"disabled": True}))[0] == 200
    assert (await _call(http, api, alice, "GET", "/api/v1/me"))[0] == 401
    assert (await _call(http, api, ops, "PATCH", f"/api/v1/admin/users/{user['id']}", {"disabled": False}))[0] == 200
    assert (await _call(http, api, alice, "GET", "/api/v1/me"))[0] == 200

    status, revoked = await _call(http, api, ops, "DELETE", f"/api/v1/admin/keys/{issued['key_id']}")
    assert status == 200 and revoked["status"] == "revoked"
    assert (await _call(http, api, alice, "GET", "/api/v1/me"))[0] == 401

    for method, path, body, expected in (
        ("POST", "/api/v1/admin/users", {"name": ""}, 422),
        ("POST", "/api/v1/admin/users", {"name": "x", "role": "root"}, 422),
        ("PATCH", f"/api/v1/admin/users/{user['id']}", {}, 422),
        ("PATCH", "/api/v1/admin/users/u_missing", {"role": "pro"}, 404),
        ("POST", "/api/v1/admin/users/u_missing/keys", {"name": "k"}, 404),
        ("DELETE", "/api/v1/admin/keys/missing", None, 404),
    ):
        assert (await _call(http, api, ops, method, path, body))[0] == expected, (method, path, body)


async def test_self_service_keys(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False)
    first, second = await api.key(Role.PRO, "alice"), await api.key(Role.PRO, "alice")
    bobs = await api.key(Role.PRO, "bob")
    status, mine = await _call(http, api, first, "GET", "/api/v1/keys")
    assert status == 200 and len(mine["items"]) == 2
    assert {k["user_id"] for k in mine["items"]} == {api.users["alice"]}
    bob_key_id = bobs[len("cf_live_") : len("cf_live_") + 12]
    assert (await _call(http, api, first, "DELETE", f"/api/v1/keys/{bob_key_id}"))[0] == 404
    assert (await _call(http, api, bobs, "GET", "/api/v1/me"))[0] == 200
    second_id = second[len("cf_live_") : len("cf_live_") + 12]
    status, revoked = await _call(http, api, first, "DELETE", f"/api/v1/keys/{second_id}")
    assert status == 200 and revoked["status"] == "revoked"
    assert (await _call(http, api, second, "GET", "/api/v1/me"))[0] == 401
    assert (await _call(http, api, first, "GET", "/api/v1/me"))[0] == 200


async def test_the_first_key_is_bootstrapped_once(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False)
    rt = await Runtime.open(api.settings, api.settings.redis_url.get_secret_value())  # type: ignore[union-attr]
    try:
        key = await bootstrap_first_key(rt)
        assert key is not None and await bootstrap_first_key(rt) is None
    finally:
        await rt.aclose()
    assert key in bootstrap_message(key, api.base) and "/api/v1/me" in bootstrap_message(key, api.base)
    status, me = await _call(http, api, key, "GET", "/api/v1/me")
    assert status == 200 and me["role"] == "internal"
    assert (await _call(http, api, key, "GET", "/api/v1/admin/users"))[0] == 200


async def test_admin_is_closed_with_auth_off(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, auth="none")
    async with http.get(api.url("/api/v1/admin/users")) as r:
        assert r.status == 403  # the local user is INTERNAL, but has no key: admin stays closed
    async with http.get(api.url("/api/v1/jobs")) as r:
        assert r.status == 200


def _token(role: str, sub: str = "carol") -> str:
    now = int(time.time())
    claims = {"sub": sub, "role": role, "iat": now, "exp": now + 600}
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(SECRET))


async def test_jwt_callers_with_both_schemes_on(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, auth="apikey,jwt", jwt={"secret": SECRET})
    token, key = _token("pro"), await api.key(Role.FREE)
    status, me = await _call(http, api, token, "GET", "/api/v1/me")
    assert status == 200 and me["role"] == "pro" and me["id"].startswith("j_")
    assert (await _call(http, api, key, "GET", "/api/v1/me"))[1]["role"] == "free"
    status, job = await _call(http, api, token, "POST", "/api/v1/jobs", TINY)
    assert status == 202
    assert (await _call(http, api, key, "GET", f"/api/v1/jobs/{job['job_id']}"))[0] == 404
    assert (await _call(http, api, _token("pro", "dave"), "GET", f"/api/v1/jobs/{job['job_id']}"))[0] == 404
    assert (await _call(http, api, token, "GET", f"/api/v1/jobs/{job['job_id']}"))[0] == 200
    assert (await _call(http, api, _token("internal"), "GET", "/api/v1/admin/users"))[0] == 200
    bad = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    status, answer = await _call(http, api, bad, "GET", "/api/v1/me")
    assert status == 401
    status, other = await _call(http, api, "cf_live_nope", "GET", "/api/v1/me")
    assert answer == {**other, "error": {**other["error"], "request_id": answer["error"]["request_id"],
                                         "timestamp": answer["error"]["timestamp"]}}  # fmt: skip


async def test_a_jwt_only_server_keeps_no_keys(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, auth="jwt", jwt={"secret": SECRET})
    status, answer = await _call(http, api, _token("internal"), "GET", "/api/v1/admin/users")
    assert status == 404 and "COMFYFLOW_AUTH=jwt" in answer["error"]["message"]
    assert (await _call(http, api, await api.key(Role.INTERNAL), "GET", "/api/v1/me"))[0] == 401
