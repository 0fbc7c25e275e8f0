"""A comfyflow API served on a real port (auth on, workers, Prefect enabled on the session Prefect server, the
fake ComfyUI behind it), an INTERNAL key for it, and a saved credentials block pointing at it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from comfyflow_apikey import ApiKeyAuth
from prefect.client.orchestration import get_client
from redis.asyncio import Redis

from comfyflow.api.app import create_app
from comfyflow.models import Role
from comfyflow.prefect import ComfyflowCredentials
from comfyflow.settings import Settings
from comfyflow.testing.api_server import free_port, serve_app
from tests.api.conftest import fake  # noqa: F401 (fixture)


@dataclass
class Served:
    base: str
    key: str
    settings: Settings
    block: str  # name of a saved ComfyflowCredentials block for this API and key


@pytest.fixture
async def comfyflow_api(
    make_settings: Any, server_redis_url: str, fake: Any, prefect_api_url: str  # noqa: F811
) -> AsyncIterator[Served]:
    """The API, its port given in its settings so that links derive from them (no COMFYFLOW_PUBLIC_URL)."""
    port = free_port()
    settings = make_settings(
        backends=[fake.url], redis_url=server_redis_url, auth="apikey", prefect_enabled=True,
        prefect_api_url=prefect_api_url, api_port=port,
    )  # fmt: skip
    redis = Redis.from_url(server_redis_url)
    app = create_app(settings, run_worker=True)
    block = f"cf-test-{uuid.uuid4().hex[:10]}"
    try:
        async with serve_app(app, port=port) as base:
            keys = ApiKeyAuth(settings, redis=redis)
            user = await keys.create_user("prefect-user", Role.INTERNAL)
            key = (await keys.create_key(user.id, "prefect")).key
            await ComfyflowCredentials(url=base, api_key=key).save(block)
            yield Served(base, key, settings, block)
    finally:
        async with get_client() as client:
            for doc in await client.read_block_documents():
                if doc.name == block:
                    await client.delete_block_document(doc.id)
        found = [k async for k in redis.scan_iter(match=f"{settings.key_prefix}:*", count=1000)]
        if found:
            await redis.delete(*found)
        await redis.aclose()
