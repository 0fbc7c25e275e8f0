"""Safe by default: every route of the app, enumerated from its router, answers 401 without credentials, except
health, liveness, readiness, ping and the docs; artifact links need their signature instead. Every kind of bad
credential gets the same 401."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from comfyflow_apikey import new_key, parse_key
from comfyflow_apikey.keys import checksum
from multidict import CIMultiDict

from comfyflow.api.app import create_app
from comfyflow.errors import ConfigError, PluginError
from comfyflow.models import Role
from tests.auth.conftest import auth

PUBLIC = {"/health", "/healthz", "/readyz", "/ping", "/docs", "/docs/redoc.standalone.js", "/openapi.json"}
CONSOLE = {"/ui"}  # the web console's page and its files (no data in them); any other /ui/<name> needs a key
PARAM = re.compile(r"<([a-z_]+)(?::[a-z]+)?>")
#: These tests send more refused requests than one address may per minute (tests/auth/test_throttle.py): off.
UNTHROTTLED = {"throttle": {"auth_failures_per_minute": 0, "anonymous_per_minute": 0}}
VALUES = {"job_id": "0" * 32, "key": "jobs/" + "0" * 32 + "/0.png", "user_id": "u_0", "key_id": "k0"}


def concrete(path: str) -> str:
    return "/" + PARAM.sub(lambda m: VALUES.get(m.group(1), "x"), path)


def routes(app: Any) -> list[tuple[str, str, bool]]:
    """(method, concrete path, is websocket) for every route the app serves."""
    out = []
    for route in app.router.routes:
        for method in sorted(route.methods):
            out.append((method, concrete(route.path), bool(route.extra.websocket)))
    return out


async def _status(http: aiohttp.ClientSession, base: str, method: str, path: str, ws: bool,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    if ws:
        try:
            async with http.ws_connect(base + path, headers=headers):
                return 101, None
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, None
    async with http.request(method, base + path, headers=headers) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else None
        return r.status, body


async def test_every_route_needs_credentials(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, **UNTHROTTLED)
    table = routes(api.app)
    assert len(table) >= 25 and ("POST", "/api/v1/admin/users", False) in table and any(ws for *_, ws in table)
    seen_public = set()
    for method, path, ws in table:
        status, body = await _status(http, api.base, method, path, ws)
        if path in PUBLIC:
            seen_public.add(path)
            assert status in (200, 503), (method, path, status)  # /health may be 503 (no worker): still no 401
        elif path in CONSOLE:
            assert status == 200, (method, path, status)
        elif path.startswith("/api/v1/artifacts/"):
            assert status == 403, (method, path, status)  # no signature: refused before any lookup
        else:
            assert status == 401, (method, path, status, body)
            if body is not None:
                assert body["error"]["code"] == "UNAUTHORIZED"
    assert seen_public == PUBLIC


async def test_every_route_refuses_a_bad_key_too(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, **UNTHROTTLED)
    bad = auth(new_key()[0])
    for method, path, ws in routes(api.app):
        if path in PUBLIC or path in CONSOLE or path.startswith("/api/v1/artifacts/"):
            continue
        status, _ = await _status(http, api.base, method, path, ws, bad)
        assert status == 401, (method, path, status)


async def test_every_kind_of_bad_credential_gets_the_same_401(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False)
    good = await api.key(Role.PRO, "alice")
    revoked = await api.key(Role.PRO, "alice")
    await api.store.revoke_key(parse_key(revoked).key_id)  # type: ignore[union-attr]
    expired = await api.key(Role.PRO, "alice", expires_at=datetime.now(UTC) + timedelta(seconds=1))
    disabled = await api.key(Role.FREE, "mallory")
    await api.store.update_user(api.users["mallory"], disabled=True)
    typo = good[:20] + ("x" if good[20] != "x" else "y") + good[21:]
    forged_body = good[: len("cf_live_") + 13] + "B" * 32
    await asyncio.sleep(1.1)
    kinds: dict[str, Any] = {
        "none": {},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty bearer": {"Authorization": "Bearer"},
        "not a key": {"Authorization": "Bearer hello"},
        "jwt-shaped": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"},
        "malformed key": {"Authorization": "Bearer cf_live_short"},
        "typo (checksum)": auth(typo),
        "unknown key id": auth(new_key()[0]),
        "wrong secret": auth(forged_body + checksum(forged_body)),
        "revoked": auth(revoked),
        "expired": auth(expired),
        "disabled user": auth(disabled),
        "two headers": CIMultiDict([("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")]),
    }
    bodies = {}
    for kind, headers in kinds.items():
        async with http.get(api.url("/api/v1/jobs"), headers=headers) as r:
            assert r.status == 401, (kind, r.status, await r.text())
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="comfyflow"', kind
            assert "X-RateLimit-Limit" not in r.headers
            error = (await r.json())["error"]
            bodies[kind] = json.dumps([error["code"], error["message"], error["details"]])
    assert len(set(bodies.values())) == 1, bodies
    async with http.get(api.url("/api/v1/jobs"), headers=auth(good)) as r:
        assert r.status == 200


def test_auth_off_is_refused_on_a_public_address(make_settings: Any) -> None:
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com"):
        with pytest.raises(ConfigError, match="COMFYFLOW_AUTH=none"):
            create_app(make_settings(auth="none", api_host=host))
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        create_app(make_settings(auth="none", api_host=host))
    create_app(make_settings(auth="apikey", api_host="0.0.0.0"))
    with pytest.raises(PluginError, match="no-such-scheme"):
        create_app(make_settings(auth="apikey,no-such-scheme"))


async def test_authenticated_answers_carry_rate_limit_headers(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False)
    key = await api.key(Role.PRO)
    for path, expected in (("/api/v1/me", 200), ("/api/v1/jobs/" + "0" * 32, 404), ("/api/v1/jobs", 200)):
        async with http.get(api.url(path), headers=auth(key)) as r:
            assert r.status == expected
            assert r.headers["X-RateLimit-Limit"] == "20"
            assert 0 <= int(r.headers["X-RateLimit-Remaining"]) < 20
            assert 0 < int(r.headers["X-RateLimit-Reset"]) <= 60
    async with http.get(api.url("/api/v1/me"), headers=auth(key)) as r:
        me = await r.json()
    assert me["role"] == "pro" and me["id"] == api.users["user-pro"] and me["limits"]["concurrent_jobs"] == 3
