"""A thin, pipelined Redis connection for the API's hottest calls: the submit script, the rate-limited job read and
the job's ``HGETALL`` (issue 13).

redis-py's asyncio client costs more CPU per call than the API's whole submit script costs Redis: a pool
checkout and release, a retry wrapper, a timeout context per reply, observability hooks (about a quarter of a
submit's CPU in the API process, profiled with py-spy). Here every caller writes its command (packed by hiredis)
to one connection and awaits its reply; Redis answers a connection's commands in the order they were sent, so the
replies (parsed by hiredis) are handed out in that order. Many requests in flight share the connection.

It keeps the pooled client's guarantees (comfyflow/core/redis_conn.py):

- a connect timeout, and a reply timeout: a watchdog fails every waiting call with redis-py's ``TimeoutError``
  once the oldest has waited ``socket_timeout`` seconds, and drops the connection;
- errors are redis-py's exception classes (``ConnectionError``, ``TimeoutError``, ``BusyLoadingError``,
  ``NoScriptError``, ``ResponseError``), so the API answers 503 + Retry-After when Redis is down, as before;
- a dropped connection is noticed at once (the connection is always being read) and opened again by the next call.

A call already sent when the connection drops fails (the request gets a 503) rather than being sent twice: a
script run twice could queue a job twice. TLS (``rediss://``) is not spoken here: ``HotLine.open`` answers None
and the pooled client serves those calls.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any

import hiredis
from redis import exceptions as rx
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url

from comfyflow.settings import Settings

_ERRORS: tuple[tuple[str, type[Exception]], ...] = (
    ("NOSCRIPT", rx.NoScriptError),
    ("LOADING", rx.BusyLoadingError),
    ("WRONGPASS", rx.AuthenticationError),
    ("NOAUTH", rx.AuthenticationError),
)


def _pack(*args: Any) -> bytes:
    return hiredis.pack_command(args)


def _error(reply: rx.ResponseError) -> Exception:
    text = str(reply)
    for prefix, cls in _ERRORS:
        if text.startswith(prefix):
            return cls(text)
    return reply


class _Wire(asyncio.Protocol):
    """One connection: commands go out in order, replies are matched to the waiting calls in the same order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.reader = hiredis.Reader(replyError=rx.ResponseError, encoding="utf-8", errors="surrogateescape")
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # commands sent in this turn of the event loop, written together at its end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()[0]
                if future.done():  # its caller gave up (cancelled); the reply is dropped
                    continue
                if isinstance(reply, rx.ResponseError):
                    future.set_exception(_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.close(rx.ConnectionError(f"Redis sent a reply that cannot be read: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(rx.ConnectionError(f"The connection to Redis was lost ({exc or 'closed by the server'})."))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.waiting.append((future, self.loop.time()))
        if not self._out:
            self.loop.call_soon(self._write)
        self._out.append(packed)
        if self._timer is None:
            self._timer = self.loop.call_later(self.timeout, self._watch)
        return future

    def _write(self) -> None:
        """One socket write for every command sent since the last: each write costs a system call and wakes
        Redis (with 32 requests in flight a turn of the loop handles several submits; ~4% of a submit's CPU)."""
        out, self._out = self._out, []
        if not self.lost and self.transport is not None:  # else their calls failed already (_fail)
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _watch(self) -> None:
        self._timer = None
        if not self.waiting or self.lost:
            return
        left = self.waiting[0][1] + self.timeout - self.loop.time()
        if left <= 0:
            self.close(rx.TimeoutError(f"Redis did not answer within {self.timeout:g} s."))
        else:
            self._timer = self.loop.call_later(left, self._watch)

    def _fail(self, exc: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, exc: Exception | None = None) -> None:
        self.lost = True
        self._fail(exc or rx.ConnectionError("The connection to Redis was closed."))
        if self.transport is not None:
            self.transport.close()


class HotLine:
    """Redis commands and registered scripts over one pipelined connection, opened on first use."""

    def __init__(self, url: str, *, connect_timeout: float, socket_timeout: float) -> None:
        params = parse_url(url)
        cls = params.get("connection_class")
        if cls is not None and cls is not UnixDomainSocketConnection:
            raise ValueError(f"HotLine speaks redis:// and unix:// only, not {url.split(':', 1)[0]}://")
        self._path: str | None = params.get("path")
        self._host = params.get("host", "localhost")
        self._port = int(params.get("port", 6379))
        self._db = int(params.get("db", 0) or 0)
        self._username: str | None = params.get("username")
        self._password: str | None = params.get("password")
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self._wire: _Wire | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def open(cls, settings: Settings, url: str) -> HotLine | None:
        """A hot line to ``url`` with the settings' Redis timeouts, or None for a URL it does not speak (TLS)."""
        try:
            return cls(
                url,
                connect_timeout=settings.redis_connect_timeout_seconds or 5.0,
                socket_timeout=settings.redis_socket_timeout_seconds or 5.0,
            )
        except ValueError:
            return None

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (strings decoded as UTF-8). Raises redis-py's exceptions."""
        wire = self._wire
        if wire is None or wire.lost:
            wire = await self._connect()
        return await wire.send(_pack(*args))

    async def script(self, sha: str, source: str | bytes | memoryview, keys: list[str], args: list[Any]) -> Any:
        """``EVALSHA``; ``EVAL`` (which also caches the script) when Redis does not know it yet."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except rx.NoScriptError:
            return await self.call("EVAL", source, len(keys), *keys, *args)

    async def _connect(self) -> _Wire:
        async with self._lock:
            if self._wire is not None and not self._wire.lost:
                return self._wire
            loop = asyncio.get_running_loop()
            wire = _Wire(loop, self.socket_timeout)
            where = self._path or f"{self._host}:{self._port}"
            try:
                async with asyncio.timeout(self.connect_timeout):
                    if self._path:
                        await loop.create_unix_connection(lambda: wire, self._path)
                    else:
                        await loop.create_connection(lambda: wire, self._host, self._port)
            except TimeoutError as exc:  # asyncio.timeout's (the built-in one)
                raise rx.TimeoutError(f"Connecting to Redis at {where} timed out.") from exc
            except OSError as exc:
                raise rx.ConnectionError(f"Cannot connect to Redis at {where}: {exc}") from exc
            sock = wire.transport.get_extra_info("socket") if wire.transport is not None else None
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            try:
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    await wire.send(_pack("AUTH", *auth))
                if self._db:
                    await wire.send(_pack("SELECT", self._db))
            except BaseException:
                wire.close()
                raise
            self._wire = wire
            return wire

    async def aclose(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None
