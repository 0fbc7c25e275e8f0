"""Run the Sanic app on a real loopback port inside the current event loop (for tests and benchmarks)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

from sanic import Sanic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_app(app: Sanic, host: str = "127.0.0.1", port: int | None = None) -> AsyncIterator[str]:
    """Start ``app`` with its listeners; yield its base URL; stop it gracefully (listeners included)."""
    port = port or free_port()
    # Sanic's TouchUp rewrites its HTTP class from source at the first start in a process and cannot do it again
    # (KeyError: 'read'); tests and benchmarks start many apps in one process, so keep the plain class.
    app.config.TOUCHUP = False
    server = await app.create_server(host=host, port=port, return_asyncio_server=True, access_log=False)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await server.before_stop()
        await server.close()
        await server.after_stop()
