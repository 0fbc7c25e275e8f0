"""Local artifact links: signed and expiring, Range support, 403 when tampered or expired, 410 after retention."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.asyncio import Redis

from comfyflow.core.links import Links
from comfyflow.core.retention import RetentionSweeper
from comfyflow.core.runtime import Runtime
from comfyflow.settings import Settings


async def _finished_job(http: Any, base: str) -> dict[str, Any]:
    async with http.post(f"{base}/api/v1/jobs", json={"prompt": "fox", "width": 64, "height": 64, "steps": 1}) as r:
        job = await r.json()
    for _ in range(200):
        async with http.get(f"{base}/api/v1/jobs/{job['job_id']}") as r:
            job = await r.json()
        if job["status"] == "succeeded":
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(job)


async def test_links_range_tamper_expiry_and_retention(api_factory, http, make_settings, server_redis_url) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    job = await _finished_job(http, base)
    art = job["result"]["artifacts"][0]
    async with http.get(art["url"]) as r:
        data = await r.read()
        assert r.status == 200 and r.headers["Content-Length"] == str(art["size"]) and r.headers["ETag"]
        etag = r.headers["ETag"]
    assert hashlib.sha256(data).hexdigest() == art["sha256"]
    async with http.get(art["url"], headers={"Range": "bytes=-4"}) as r:
        assert r.status == 206 and await r.read() == data[-4:]
        assert r.headers["Content-Range"] == f"bytes {len(data) - 4}-{len(data) - 1}/{len(data)}"
    async with http.get(art["url"], headers={"Range": f"bytes={len(data) + 10}-"}) as r:
        assert r.status == 416
    async with http.get(art["url"], headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    async with http.get(art["url"].replace(art["key"], art["key"].replace("0.png", "1.png"))) as r:
        assert r.status == 403, "a signature is valid for one key only"
    settings: Settings = make_settings(redis_url=server_redis_url, backends=["http://127.0.0.1:9"])
    rt = await Runtime.open(settings, server_redis_url, backends={})
    try:
        expired_link = Links(settings, rt.storage).local_url(base, art["key"], ttl=-5)
        async with http.get(expired_link) as r:
            body = await r.json()
            assert r.status == 403 and "expired" in body["error"]["message"]
        # retention: make the job due now and sweep; the link (still validly signed) answers 410
        await rt.redis.zadd(rt.store.keys.retention, {job["job_id"]: 0})
        assert await RetentionSweeper(rt).run_once() == 1
        async with http.get(art["url"]) as r:
            assert r.status == 410 and (await r.json())["error"]["code"] == "GONE"
        async with http.get(f"{base}/api/v1/jobs/{job['job_id']}") as r:
            assert (await r.json())["status"] == "expired"
    finally:
        await rt.aclose()
    assert isinstance(rt.redis, Redis)
