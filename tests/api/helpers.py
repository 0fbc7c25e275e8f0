"""Small helpers shared by the API tests: tiny requests, polling, envelope checks, images, SSE reading."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from typing import Any

import aiohttp
from PIL import Image

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


def tiny(**fields: Any) -> dict[str, Any]:
    """A txt2img request the fake renders in a few milliseconds."""
    return {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, **fields}


async def submit(http: aiohttp.ClientSession, base: str, body: dict[str, Any] | None = None, **kw: Any) -> dict:
    async with http.post(f"{base}/api/v1/jobs", json=body or tiny(), **kw) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


async def get_job(http: aiohttp.ClientSession, base: str, job_id: str) -> dict:
    async with http.get(f"{base}/api/v1/jobs/{job_id}") as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def wait_for(
    http: aiohttp.ClientSession, base: str, job_id: str, until: Any = TERMINAL, timeout: float = 20.0
) -> dict:
    """Poll the job until ``until(job)`` (or its status is in ``until``)."""
    check = until if callable(until) else (lambda job: job["status"] in until)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await get_job(http, base, job_id)
        if check(job):
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job never reached {until}: {job}"
        await asyncio.sleep(0.03)


async def until_true(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what} never became true"
        await asyncio.sleep(0.02)


async def error_of(resp: aiohttp.ClientResponse, status: int, code: str | None = None) -> dict:
    """Check the envelope of an error answer and return its ``error`` object."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers.get("X-Request-ID"), "every response carries X-Request-ID"
    body = await resp.json(content_type=None)
    err = body["error"]
    assert set(err) >= {"code", "message", "details", "request_id", "timestamp"}, body
    assert err["request_id"] == resp.headers["X-Request-ID"]
    assert err["message"]
    if code is not None:
        assert err["code"] == code, body
    return dict(err)


def fields_of(err: dict) -> set[str]:
    details = err.get("details")
    return {d.get("field") for d in details if isinstance(d, dict)} if isinstance(details, list) else set()


def png(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one tiny IDAT: a decompression bomb's shape
    without the bomb (nothing here may decode the pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


async def read_sse(resp: aiohttp.ClientResponse, *, stop_after: int | None = None) -> tuple[list[dict], int]:
    """Read an event stream: (events as {id, event, data}, heartbeat comments seen). Stops at EOF or after
    ``stop_after`` events."""
    import json

    events: list[dict] = []
    beats = 0
    current: dict[str, Any] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            beats += 1
        elif not line:
            if current:
                current["data"] = json.loads(current.get("data", "{}"))
                events.append(current)
                current = {}
                if stop_after is not None and len(events) >= stop_after:
                    break
        else:
            name, _, value = line.partition(": ")
            current[name] = value
    return events, beats
