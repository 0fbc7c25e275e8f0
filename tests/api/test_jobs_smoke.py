"""Smoke: the job contract over a real server."""

from __future__ import annotations

import asyncio


async def test_submit_poll_download(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    async with http.post(
        f"{base}/api/v1/jobs", json={"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}
    ) as r:
        assert r.status == 202, await r.text()
        job = await r.json()
        assert r.headers["Location"] == f"/api/v1/jobs/{job['job_id']}"
        assert r.headers["X-Request-ID"]
    for _ in range(200):
        async with http.get(f"{base}/api/v1/jobs/{job['job_id']}") as r:
            job = await r.json()
        if job["status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job
    art = job["result"]["artifacts"][0]
    async with http.get(art["url"]) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        data = await r.read()
    import hashlib

    assert hashlib.sha256(data).hexdigest() == art["sha256"]
    async with http.get(art["url"], headers={"Range": "bytes=0-7"}) as r:
        assert r.status == 206 and (await r.read()) == data[:8]
    async with http.get(art["url"].replace("sig=", "sig=0")) as r:
        assert r.status == 403 and (await r.json())["error"]["code"] == "FORBIDDEN"
