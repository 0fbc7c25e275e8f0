"""The synchronous POST /api/v1/generate over a real server: success, and the timeout path (504 with the job id,
the job keeps running and later succeeds)."""

from __future__ import annotations

from tests.api.helpers import error_of, get_job, tiny, wait_for


async def test_generate_returns_the_finished_job(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    async with http.post(f"{base}/api/v1/generate", json=tiny(seed=7)) as r:
        assert r.status == 200, await r.text()
        job = await r.json()
        assert r.headers["Location"] == f"/api/v1/jobs/{job['job_id']}"
    assert job["status"] == "succeeded" and job["result"]["seed"] == 7
    async with http.get(job["result"]["artifacts"][0]["url"]) as r:
        assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")
    # a finished job fails the same way: the answer is the job, not an error
    async with http.post(f"{base}/api/v1/generate", json=tiny(model="missing.safetensors")) as r:
        assert r.status == 200
        failed = await r.json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "INVALID_GRAPH"


async def test_generate_timeout_answers_504_and_the_job_keeps_running(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 2.0
    base = await api_factory()
    async with http.post(f"{base}/api/v1/generate", params={"timeout": "1"}, json=tiny()) as r:
        err = await error_of(r, 504, "GENERATION_TIMEOUT")
        job_id = err["details"]["job_id"]
        assert r.headers["Location"] == f"/api/v1/jobs/{job_id}" == err["details"]["location"]
    assert (await get_job(http, base, job_id))["status"] in ("queued", "running")
    done = await wait_for(http, base, job_id, timeout=15)
    assert done["status"] == "succeeded" and done["attempt"] == 1

    for bad in ("0", "-5", "abc", "100000"):
        async with http.post(f"{base}/api/v1/generate", params={"timeout": bad}, json=tiny()) as r:
            assert (await error_of(r, 422, "VALIDATION_ERROR"))["details"][0]["field"] == "timeout"


async def test_generate_waits_longer_than_the_redis_socket_timeout(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 6.0  # the wait spans more than redis-py's 5 s socket timeout
    base = await api_factory()
    async with http.post(f"{base}/api/v1/generate", params={"timeout": "20"}, json=tiny()) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["status"] == "succeeded"


async def test_generate_with_idempotency_key_returns_the_same_job(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    headers = {"Idempotency-Key": "sync-1"}
    async with http.post(f"{base}/api/v1/generate", json=tiny(), headers=headers) as r:
        first = await r.json()
    async with http.post(f"{base}/api/v1/generate", json=tiny(), headers=headers) as r:
        assert r.status == 200
        second = await r.json()
    assert first["job_id"] == second["job_id"] and second["status"] == "succeeded"
    assert second["result"]["artifacts"][0]["sha256"] == first["result"]["artifacts"][0]["sha256"]
