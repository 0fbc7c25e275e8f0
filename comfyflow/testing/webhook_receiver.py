"""A webhook receiver on a loopback port for tests: verifies every request with ``standardwebhooks`` and can
answer with scripted failures first (``fail_first[event] = n`` answers 500 to the first n tries of an event)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from comfyflow.testing.api_server import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: Any
    answered: int


@dataclass
class WebhookReceiver:
    secret: str
    fail_first: dict[str, int] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _seen: dict[str, int] = field(default_factory=dict)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hooks"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            payload = Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            payload, verified = json.loads(body or b"null"), False
        event = payload.get("type", "") if isinstance(payload, dict) else ""
        n = self._seen[event] = self._seen.get(event, 0) + 1
        status = 500 if n <= self.fail_first.get(event, 0) or not verified else 200
        self.requests.append(Received(headers, body, verified, payload, status))
        self._event.set()
        return web.Response(status=status, text="ok" if status == 200 else "try again")

    def delivered(self, event: str | None = None) -> list[Received]:
        return [r for r in self.requests if r.answered == 200 and (event is None or r.payload["type"] == event)]

    async def wait(self, predicate: Any, timeout: float = 15.0) -> None:
        """Until ``predicate(self)`` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"webhook receiver: condition not met; got {[r.payload for r in self.requests]}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), timeout=min(left, 0.2))
            except TimeoutError:
                pass
