"""Submits and job reads count against the rate limit in the same Redis round trip as their own work (the submit
script; a pipeline with the job's HGETALL), and still count when they fail before it: every request counts."""

from __future__ import annotations

from typing import Any

import aiohttp

from comfyflow.models import Role
from tests.auth.conftest import TINY, auth


async def test_submits_reads_and_bad_submits_share_one_window(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits={"free": {"requests_per_minute": 6, "daily_jobs": 100}})
    key = await api.key(Role.FREE)
    remaining = []
    async with http.post(api.url("/api/v1/jobs"), json=TINY, headers=auth(key)) as r:
        assert r.status == 202
        remaining.append(r.headers["X-RateLimit-Remaining"])
        job_id = (await r.json())["job_id"]
    for _ in range(2):
        async with http.get(api.url(f"/api/v1/jobs/{job_id}"), headers=auth(key)) as r:
            assert r.status == 200 and (await r.json())["job_id"] == job_id
            remaining.append(r.headers["X-RateLimit-Remaining"])
    async with http.post(api.url("/api/v1/jobs"), json={"prompt": "x", "steps": 0}, headers=auth(key)) as r:
        assert r.status == 422  # refused before the script: counted all the same
        remaining.append(r.headers["X-RateLimit-Remaining"])
    async with http.get(api.url("/api/v1/jobs/not-a-job-id"), headers=auth(key)) as r:
        assert r.status == 404
        remaining.append(r.headers["X-RateLimit-Remaining"])
    async with http.get(api.url("/api/v1/jobs"), headers=auth(key)) as r:  # a route counted by the middleware
        assert r.status == 200
        remaining.append(r.headers["X-RateLimit-Remaining"])
    assert remaining == ["5", "4", "3", "2", "1", "0"]
    for method, path, body in (("POST", "/api/v1/jobs", TINY), ("GET", f"/api/v1/jobs/{job_id}", None),
                               ("POST", "/api/v1/jobs", {"prompt": "x", "steps": 0})):  # fmt: skip
        async with http.request(method, api.url(path), json=body, headers=auth(key)) as r:
            assert r.status == 429, (method, path, r.status)
            assert r.headers["X-RateLimit-Remaining"] == "0" and 1 <= int(r.headers["Retry-After"]) <= 60
    owner_jobs = f"{api.settings.key_prefix}:owner:{api.users['user-free']}:jobs"
    assert await api.store.redis.zcard(owner_jobs) == 1, "the refused submit created nothing"
