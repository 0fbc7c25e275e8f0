"""A live API with auth on (real port, real Redis, embedded workers, the fake ComfyUI), and a key store to mint
users and keys for it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from comfyflow_apikey import ApiKeyAuth
from redis.asyncio import Redis
from sanic import Sanic

from comfyflow.api.app import create_app
from comfyflow.models import Role
from comfyflow.settings import Settings
from comfyflow.testing.api_server import serve_app
from tests.api.conftest import fake, http  # noqa: F401  (fixtures)

TINY = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


@dataclass
class AuthAPI:
    """One running API with auth on, and its key store."""

    base: str
    app: Sanic
    settings: Settings
    store: ApiKeyAuth
    users: dict[str, str] = field(default_factory=dict)

    async def key(self, role: Role = Role.FREE, user: str | None = None, *, expires_at: datetime | None = None) -> str:
        """A new key for ``user`` (created with ``role`` the first time); the user defaults to one per role."""
        user = user or f"user-{role.value}"
        if user not in self.users:
            self.users[user] = (await self.store.create_user(user, role)).id
        return (await self.store.create_key(self.users[user], "test", expires_at=expires_at)).key

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def auth_api(make_settings: Any, server_redis_url: str, fake: Any) -> AsyncIterator[Any]:  # noqa: F811
    """``await auth_api(**settings)`` starts an API with ``COMFYFLOW_AUTH=apikey`` (by default) and workers."""
    stack = contextlib.AsyncExitStack()
    redis = Redis.from_url(server_redis_url)
    prefixes: set[str] = set()

    async def start(*, run_worker: bool = True, **overrides: Any) -> AuthAPI:
        overrides.setdefault("backends", [fake.url])
        overrides.setdefault("redis_url", server_redis_url)
        overrides.setdefault("auth", "apikey")
        settings = make_settings(**overrides)
        prefixes.add(settings.key_prefix)
        app = create_app(settings, run_worker=run_worker)
        app.config.TOUCHUP = False  # several apps per process
        base = await stack.enter_async_context(serve_app(app))
        return AuthAPI(base, app, settings, ApiKeyAuth(settings, redis=redis))

    yield start
    await stack.aclose()
    for prefix in prefixes:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
    await redis.aclose()
