"""Links point at the web console's page when the API serves ``/ui``, else at the API resource."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from comfyflow.prefect import links
from comfyflow.settings import Settings
from comfyflow.testing.api_server import free_port


async def serve(routes: web.RouteTableDef) -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def with_console() -> AsyncIterator[str]:
    routes = web.RouteTableDef()

    @routes.get("/ui/")
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>comfyflow</title>", content_type="text/html")

    async for base in serve(routes):
        yield base


@pytest.fixture
async def without_console() -> AsyncIterator[str]:
    routes = web.RouteTableDef()

    @routes.get("/ui/")
    async def refused(request: web.Request) -> web.Response:  # what the API answers for a route it lacks
        return web.json_response({"error": {"code": "UNAUTHORIZED"}}, status=401)

    async for base in serve(routes):
        yield base


async def test_console_page_when_served_else_the_api_resource(with_console: str, without_console: str) -> None:
    assert await links.console_served(with_console + "/")
    assert links.job_page(with_console, "j1", console=True) == f"{with_console}/ui/#/jobs/j1"
    assert links.batch_page(with_console, "b1", console=True) == f"{with_console}/ui/#/batches/b1"
    assert not await links.console_served(without_console)
    assert links.job_page(without_console, "j1", console=False) == f"{without_console}/api/v1/jobs/j1"
    assert links.batch_page(without_console, "b1", console=False) == f"{without_console}/api/v1/batches/b1"
    assert not await links.console_served(f"http://127.0.0.1:{free_port()}")  # nobody there


def test_public_base_url_from_settings() -> None:
    assert Settings(public_url="https://cf.example.com/").public_base_url == "https://cf.example.com"
    assert Settings(api_host="0.0.0.0", api_port=8123).public_base_url == "http://127.0.0.1:8123"
    assert Settings(api_host="10.0.0.5", api_port=9000).public_base_url == "http://10.0.0.5:9000"
    assert Settings(api_host="::1", api_port=9000).public_base_url == "http://[::1]:9000"
