"""Tenancy: a caller sees and acts only on its own jobs and uploads; anything else is 404 (or, for someone
else's upload, the same answer as for one that does not exist)."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from PIL import Image

from comfyflow.models import Role
from tests.auth.conftest import TINY, auth

FAST = {"free": {"requests_per_minute": 10_000}, "pro": {"requests_per_minute": 10_000}}


async def _job(http: aiohttp.ClientSession, api: Any, key: str) -> dict[str, Any]:
    async with http.post(api.url("/api/v1/jobs"), json=TINY, headers=auth(key)) as r:
        assert r.status == 202
        job = await r.json()
    for _ in range(400):
        async with http.get(api.url(f"/api/v1/jobs/{job['job_id']}"), headers=auth(key)) as r:
            job = await r.json()
        if job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(job)


async def test_key_a_cannot_touch_key_bs_job(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(limits=FAST)
    a, b = await api.key(Role.PRO, "alice"), await api.key(Role.PRO, "bob")
    job = await _job(http, api, b)
    assert job["status"] == "succeeded" and job["result"]["artifacts"]
    expires = int(parse_qs(urlsplit(job["result"]["artifacts"][0]["url"]).query)["expires"][0])
    assert abs(expires - (time.time() + 86400)) < 60  # a PRO caller's links live 24 h
    jid = job["job_id"]
    attempts = [
        ("GET", f"/api/v1/jobs/{jid}"),
        ("DELETE", f"/api/v1/jobs/{jid}"),
        ("POST", f"/api/v1/jobs/{jid}/retry"),
        ("GET", f"/api/v1/jobs/{jid}/events"),
    ]
    for method, path in attempts:
        async with http.request(method, api.url(path), headers=auth(a)) as r:
            assert r.status == 404, (method, path, r.status)
            assert (await r.json())["error"]["code"] == "NOT_FOUND"
    try:
        async with http.ws_connect(api.url(f"/ws/jobs/{jid}"), headers=auth(a)) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING) or (
                msg.type == aiohttp.WSMsgType.TEXT and "NOT_FOUND" in msg.data
            ), msg
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 404
    async with http.get(api.url("/api/v1/jobs"), headers=auth(a)) as r:
        assert (await r.json())["items"] == []  # B's job is not in A's list (and so neither are its links)
    async with http.get(api.url(f"/api/v1/jobs/{jid}"), headers=auth(b)) as r:
        assert r.status == 200 and (await r.json())["status"] == "succeeded"  # untouched by A's attempts
    # A second key of the same user sees the job: jobs belong to the user, not to one key.
    async with http.get(api.url(f"/api/v1/jobs/{jid}"), headers=auth(await api.key(Role.PRO, "bob"))) as r:
        assert r.status == 200


async def test_uploads_are_private(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits=FAST)
    a, b = await api.key(Role.PRO, "alice"), await api.key(Role.PRO, "bob")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    async with http.post(api.url("/api/v1/uploads"), data=buf.getvalue(),
                         headers={**auth(b), "Content-Type": "image/png"}) as r:  # fmt: skip
        assert r.status == 201
        upload = (await r.json())["upload_id"]
    body = {**TINY, "kind": "img2img", "init_image": upload}
    answers = []
    for key, upload_id in ((a, upload), (a, "0" * 32)):  # B's upload and one that does not exist: same answer
        async with http.post(api.url("/api/v1/jobs"), json={**body, "init_image": upload_id}, headers=auth(key)) as r:
            assert r.status == 422
            err = (await r.json())["error"]
            answers.append(err["message"].replace(upload_id, "<id>"))
    assert answers[0] == answers[1]
    async with http.post(api.url("/api/v1/jobs"), json=body, headers=auth(b)) as r:
        assert r.status == 202
