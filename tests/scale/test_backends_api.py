"""``GET /api/v1/backends`` and ``/api/v1/admin/backends``: INTERNAL callers see and change the pool at run time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sanic import Request

from comfyflow.api.app import create_app
from comfyflow.api.policy import OpenPolicy
from comfyflow.core.pool import backend_id
from comfyflow.models import Principal, Role
from comfyflow.testing.api_server import serve_app
from tests.scale.conftest import FAST


class FreeCaller(OpenPolicy):
    async def authenticate(self, request: Request) -> Principal:
        return Principal(id="someone", role=Role.FREE)


@pytest.fixture
async def api(make_settings: Any, redis_url: str, fakes: Any) -> AsyncIterator[Any]:
    stack = contextlib.AsyncExitStack()

    async def start(policy: Any = None) -> str:
        settings = make_settings(backends=[fakes["a"].url], redis_url=redis_url, auth="none", **FAST)
        app = create_app(settings, policy=policy or OpenPolicy())
        return await stack.enter_async_context(serve_app(app))

    yield start
    await stack.aclose()


async def test_register_list_and_remove_backends(api, fakes) -> None:  # type: ignore[no-untyped-def]
    a, b = fakes["a"], fakes["b"]
    base = await api()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/backends") as r:
            assert r.status == 200
            listed = (await r.json())["backends"]
        assert [x["url"] for x in listed] == [a.url] and listed[0]["source"] == "settings"

        body = {"url": b.url, "capacity": 3, "labels": ["vram-24gb"]}
        async with http.post(f"{base}/api/v1/admin/backends", json=body) as r:
            assert r.status == 201, await r.text()
            added = await r.json()
        assert added["id"] == backend_id(b.url) and added["health"] == "up" and added["capacity"] == 3
        assert added["models"]["checkpoints"] == list(b.checkpoints) and added["labels"] == ["vram-24gb"]
        assert added["source"] == "runtime" and added["in_use"] == 0 and added["node_classes"] > 100

        for bad in ({"url": "ftp://x"}, {"url": b.url, "labels": ["no spaces"]}, {"url": b.url, "capacity": 0}):
            async with http.post(f"{base}/api/v1/admin/backends", json=bad) as r:
                assert r.status == 422, (bad, await r.text())
                assert (await r.json())["error"]["code"] == "VALIDATION_ERROR"

        async with http.get(f"{base}/api/v1/admin/backends/{added['id']}") as r:
            assert r.status == 200 and (await r.json())["url"] == b.url
        async with http.delete(f"{base}/api/v1/admin/backends/{added['id']}") as r:
            assert r.status == 200 and (await r.json())["outcome"] == "removed"
        async with http.delete(f"{base}/api/v1/admin/backends/{backend_id(a.url)}") as r:
            assert (await r.json())["outcome"] == "disabled"
        async with http.get(f"{base}/api/v1/admin/backends") as r:
            listed = (await r.json())["backends"]
        assert [(x["url"], x["enabled"], x["routable"]) for x in listed] == [(a.url, False, False)]
        async with http.post(f"{base}/api/v1/admin/backends", json={"url": a.url}) as r:
            assert r.status == 201 and (await r.json())["enabled"] is True, "POST enables it again"
        async with http.delete(f"{base}/api/v1/admin/backends/0123456789abcdef") as r:
            assert r.status == 404


async def test_backends_are_for_internal_callers_only(api) -> None:  # type: ignore[no-untyped-def]
    base = await api(FreeCaller())
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/api/v1/backends"), ("POST", "/api/v1/admin/backends")):
            async with http.request(method, f"{base}{path}", json={"url": "http://127.0.0.1:1"}) as r:
                assert r.status == 403, await r.text()
                assert (await r.json())["error"]["code"] == "FORBIDDEN"
