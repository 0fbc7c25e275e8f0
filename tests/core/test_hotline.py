"""The API's thin pipelined Redis connection (comfyflow/core/hotline.py): replies matched to their callers, scripts
loaded when Redis does not know them, AUTH and SELECT from the URL, redis-py's errors for a silent, refusing or
dropped Redis, and a new connection after a drop."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import uuid
from typing import Any

import pytest
from redis import exceptions as rx
from redis.asyncio import Redis

from comfyflow.core.hotline import HotLine
from comfyflow.core.redis_conn import is_redis_down
from comfyflow.core.runtime import Runtime
from tests.conftest import close_runtime


def line(url: str, *, timeout: float = 5.0) -> HotLine:
    return HotLine(url, connect_timeout=timeout, socket_timeout=timeout)


async def test_replies_reach_their_callers_in_flight_together(redis_url: str, redis: Redis, prefix: str) -> None:
    hot = line(redis_url)
    try:
        keys = [f"{prefix}:hot:{i}" for i in range(300)]
        await asyncio.gather(*(hot.call("SET", k, f"v{i}", "EX", 60) for i, k in enumerate(keys)))
        got = await asyncio.gather(*(hot.call("GET", k) for k in keys))
        assert got == [f"v{i}" for i in range(300)]  # decoded strings, each caller its own reply
        await hot.call("HSET", f"{prefix}:hot:h", "a", "1", "b", "é")
        await hot.call("EXPIRE", f"{prefix}:hot:h", 60)
        assert await hot.call("HGETALL", f"{prefix}:hot:h") == ["a", "1", "b", "é"]
        assert await hot.call("HGETALL", f"{prefix}:hot:none") == []
        with pytest.raises(rx.ResponseError):
            await hot.call("INCR", f"{prefix}:hot:h")  # WRONGTYPE: an error for this caller only
        assert await hot.call("GET", keys[0]) == "v0"
    finally:
        await hot.aclose()


async def test_an_unknown_script_is_loaded_then_run_by_its_sha(redis_url: str, redis: Redis, prefix: str) -> None:
    source = f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], 42}}"  # a script Redis has never seen
    sha = hashlib.sha1(source.encode()).hexdigest()
    assert (await redis.script_exists(sha)) == [False]
    hot = line(redis_url)
    try:
        assert await hot.script(sha, source, [f"{prefix}:k"], ["x"]) == [f"{prefix}:k", "x", 42]
        assert (await redis.script_exists(sha)) == [True]  # EVAL cached it: the next call is an EVALSHA
        assert await hot.call("EVALSHA", sha, 1, f"{prefix}:k", "y") == [f"{prefix}:k", "y", 42]
    finally:
        await hot.aclose()


async def test_the_database_in_the_url_is_selected(server_redis_url: str, prefix: str) -> None:
    base = server_redis_url.rsplit("/", 1)[0]
    hot = line(f"{base}/7")
    other = Redis.from_url(f"{base}/7")
    try:
        await hot.call("SET", f"{prefix}:db7", "here", "EX", 60)
        assert await other.get(f"{prefix}:db7") == b"here"
    finally:
        await other.delete(f"{prefix}:db7")
        await other.aclose()
        await hot.aclose()


async def test_a_wrong_password_is_refused(embedded_redis_url: str) -> None:
    scheme, rest = embedded_redis_url.split("://", 1)
    hot = line(f"{scheme}://:not-the-password@{rest.rsplit('@', 1)[-1]}")
    with pytest.raises(rx.AuthenticationError):
        await hot.call("PING")
    await hot.aclose()


async def test_a_dropped_connection_fails_its_calls_and_the_next_call_reconnects(redis_url: str, redis: Redis) -> None:
    hot = line(redis_url)
    try:
        my_id = await hot.call("CLIENT", "ID")
        blocked = asyncio.ensure_future(hot.call("BLPOP", f"{uuid.uuid4().hex}:never", 0))  # waits until killed
        await asyncio.sleep(0)
        assert await redis.client_kill_filter(_id=my_id) == 1
        with pytest.raises(rx.ConnectionError):
            await asyncio.wait_for(blocked, timeout=30)
        assert is_redis_down(blocked.exception())  # the API answers 503 + Retry-After for it
        assert await hot.call("PING") == "PONG"  # a new connection
        assert await hot.call("CLIENT", "ID") != my_id
    finally:
        await hot.aclose()


async def test_a_silent_redis_times_out_every_waiting_call() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hot = line(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout=0.5)
        calls = [asyncio.ensure_future(hot.call("PING")) for _ in range(5)]
        done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=30)
        assert all(isinstance(d, rx.TimeoutError) and is_redis_down(d) for d in done), done
        await hot.aclose()


async def test_a_refused_connection_is_a_redis_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        hot = line(f"redis://127.0.0.1:{port}/0", timeout=2.0)
        with pytest.raises(rx.ConnectionError) as err:
            await asyncio.wait_for(hot.call("PING"), timeout=30)
        assert is_redis_down(err.value)
        await hot.aclose()


def test_tls_urls_are_left_to_the_pooled_client(make_settings: Any) -> None:
    assert HotLine.open(make_settings(), "rediss://127.0.0.1:6380/0") is None
    assert HotLine.open(make_settings(), "redis://127.0.0.1:6379/0") is not None


async def test_the_runtime_submits_and_reads_jobs_over_it_when_asked(redis_url: str, make_settings: Any) -> None:
    from comfyflow.models import Txt2ImgRequest

    rt = await Runtime.open(make_settings(), redis_url, hot_line=True)
    try:
        assert rt.hot is not None and rt.store.hot is rt.hot
        sent: list[Any] = []
        real_call = rt.hot.call

        async def call(*args: Any) -> Any:
            sent.append(args[0])
            return await real_call(*args)

        rt.hot.call = call  # type: ignore[method-assign]
        out = await rt.store.submit(Txt2ImgRequest(prompt="a fox", width=64, height=64, steps=1), owner="o")
        assert out.outcome == "ok" and out.raw is not None
        assert (await rt.store.raw(out.raw["id"]))["state"] == "queued"
        assert (await rt.store.get(out.raw["id"])).owner == "o"  # type: ignore[union-attr]
        assert sent[:1] in (["EVALSHA"], ["EVAL"]) and sent[-1] == "HGETALL"
    finally:
        await close_runtime(rt)
