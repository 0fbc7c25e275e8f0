"""Thin HTTP and WebSocket calls to one ComfyUI server.

One ``aiohttp.ClientSession`` per client, made on first use and closed by ``aclose``. No ``Origin`` header
is ever sent: ComfyUI answers 403 when it does not match ``Host`` (PROTOCOL.md fact 10). Transport failures,
timeouts and 5xx answers become ``BackendUnavailable``; what a 4xx means is left to the caller.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from comfyflow.errors import BackendUnavailable, OutputTooLarge

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
DOWNLOAD_READ_TIMEOUT = 120.0
WS_HEARTBEAT = 20.0
WS_MAX_MESSAGE = 64 * 1024 * 1024
CHUNK = 1024 * 1024  # the most of one output held at once while it is fetched
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def text(self, limit: int = 500) -> str:
        return self.body[:limit].decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ``None`` for an empty body. Raises ValueError when it is not JSON."""
        return json.loads(self.body) if self.body.strip() else None


class ComfyUIClient:
    """HTTP and WebSocket access to the ComfyUI at ``url`` (e.g. ``http://127.0.0.1:8188``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "comfyflow"},
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _unavailable(self, what: str, exc: BaseException | None = None, **details: Any) -> BackendUnavailable:
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else details.get("reason", "")
        return BackendUnavailable(
            f"ComfyUI at {self.url} failed on {what}: {reason}".rstrip(": "),
            details={"backend": self.url, "request": what, **details, "reason": reason},
        )

    async def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None,
        data: Any = None, seconds: float | None = None,
    ) -> Reply:  # fmt: skip
        """Send one request and read the whole answer. Raises BackendUnavailable on transport errors only."""
        session = self._http()
        timeout = aiohttp.ClientTimeout(total=seconds) if seconds else session.timeout
        try:
            async with session.request(
                method, self.url + path, json=json_body, params=params, data=data, timeout=timeout
            ) as resp:
                return Reply(resp.status, resp.content_type, await resp.read())
        except _TRANSPORT_ERRORS as exc:
            raise self._unavailable(f"{method} {path}", exc) from exc

    async def get_json(self, path: str, *, seconds: float | None = None) -> Any:
        """GET a JSON document. Raises BackendUnavailable unless the answer is 200 with JSON."""
        reply = await self.request("GET", path, seconds=seconds)
        if reply.status != 200:
            raise self._unavailable(f"GET {path}", status=reply.status, reason=f"HTTP {reply.status}")
        try:
            return reply.json()
        except ValueError as exc:
            raise self._unavailable(f"GET {path}", exc, status=reply.status) from exc

    async def post_json(self, path: str, body: Any, *, seconds: float | None = None) -> Reply:
        """POST a JSON body. Raises BackendUnavailable unless the answer is 200."""
        reply = await self.request("POST", path, json_body=body, seconds=seconds)
        if reply.status != 200:
            raise self._unavailable(
                f"POST {path}", status=reply.status, reason=f"HTTP {reply.status} {reply.text(200)}".strip()
            )
        return reply

    async def ws_connect(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        """Open ``/ws?clientId=``. Raises BackendUnavailable when the upgrade fails."""
        try:
            return await self._http().ws_connect(
                self.url + "/ws",
                params={"clientId": client_id},
                heartbeat=WS_HEARTBEAT,
                max_msg_size=WS_MAX_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            )
        except _TRANSPORT_ERRORS as exc:
            raise self._unavailable("websocket /ws", exc) from exc

    @contextlib.asynccontextmanager
    async def download(self, path: str, params: dict[str, str], *, max_bytes: int) -> AsyncIterator[Download]:
        """Start a GET of a file; its body is read in chunks of at most ``CHUNK`` bytes inside the block.

        Raises (on entering, or while ``chunks`` is read):
            OutputTooLarge: when its Content-Length, or the bytes received so far, are more than ``max_bytes``.
            BackendUnavailable: on transport errors, a cut-off body, or any status but 200.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=DOWNLOAD_READ_TIMEOUT
        )
        what = f"GET {path} {params.get('filename', '')!r}"
        async with contextlib.AsyncExitStack() as stack:
            try:  # only the request is classified here: what the caller raises in the block passes through
                resp = await stack.enter_async_context(
                    self._http().get(self.url + path, params=params, timeout=timeout)
                )
            except _TRANSPORT_ERRORS as exc:
                raise self._unavailable(what, exc) from exc
            if resp.status != 200:
                raise self._unavailable(what, status=resp.status, reason=f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise _too_large(params, resp.content_length, max_bytes)
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            yield Download(content_type, resp.content_length, self._chunks(resp, what, params, max_bytes))

    async def _chunks(
        self, resp: aiohttp.ClientResponse, what: str, params: dict[str, str], max_bytes: int
    ) -> AsyncIterator[bytes]:
        received = 0
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(params, received, max_bytes)
                yield chunk
        except _TRANSPORT_ERRORS as exc:
            raise self._unavailable(what, exc) from exc


@dataclass(frozen=True)
class Download:
    """A file being downloaded: its content type ("" when none), announced length, and body in chunks."""

    content_type: str
    length: int | None
    chunks: AsyncIterator[bytes]


def _too_large(params: dict[str, str], size: int, max_bytes: int) -> OutputTooLarge:
    return OutputTooLarge(
        f"output {params.get('filename', '')!r} is larger than the {max_bytes}-byte cap "
        f"(at least {size} bytes); raise COMFYFLOW_MAX_OUTPUT_BYTES to accept it",
        details={"filename": params.get("filename"), "size_at_least": size, "max_bytes": max_bytes},
    )
