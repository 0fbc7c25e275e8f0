"""Daily job quota (402) and concurrent running jobs per owner (extra jobs wait queued, never rejected)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from redis.asyncio import Redis

from comfyflow.core.owners import parked_jobs, running_jobs
from comfyflow.core.store import JobStore
from comfyflow.models import Job, JobState, Role
from tests.auth.conftest import TINY, auth

FAST = {"free": {"requests_per_minute": 10_000}, "pro": {"requests_per_minute": 10_000}}


async def _submit(http: aiohttp.ClientSession, api: Any, key: str, body: dict[str, Any] = TINY) -> Any:
    async with http.post(api.url("/api/v1/jobs"), json=body, headers=auth(key)) as r:
        return r.status, await r.json()


async def test_the_eleventh_job_of_the_day_gets_402(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits=FAST)
    key = await api.key(Role.FREE)
    for _ in range(10):
        status, body = await _submit(http, api, key)
        assert status == 202, body
    status, body = await _submit(http, api, key)
    assert status == 402, body
    assert body["error"]["code"] == "QUOTA_EXCEEDED" and body["error"]["details"]["limit"] == 10
    assert "00:00 UTC" in body["error"]["message"]
    async with http.get(api.url("/api/v1/jobs?limit=100"), headers=auth(key)) as r:
        assert len((await r.json())["items"]) == 10  # the refused one left nothing behind
    pro = await api.key(Role.PRO)
    assert (await _submit(http, api, pro))[0] == 202  # quotas are per owner


async def _watch(store: JobStore, owner: str, job_ids: list[str], timeout: float = 40) -> list[dict[str, Job]]:
    """Snapshots of the jobs every 20 ms until all are terminal."""
    snapshots: list[dict[str, Job]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        snap = {j: await store.get(j) for j in job_ids}
        snapshots.append(snap)  # type: ignore[arg-type]
        if all(job is not None and job.status.terminal for job in snap.values()):
            return snapshots
        await asyncio.sleep(0.02)
    raise AssertionError(f"jobs not finished after {timeout}s: {snapshots[-1]}")


async def test_a_second_concurrent_job_waits_queued_until_the_first_finishes(
    auth_api: Any, http: aiohttp.ClientSession, fake: Any, server_redis_url: str
) -> None:
    fake.render_time = 1.5
    api = await auth_api(limits=FAST)
    key = await api.key(Role.FREE)
    (s1, j1), (s2, j2) = [await _submit(http, api, key, {**TINY, "prompt": p}) for p in ("one", "two")]
    assert (s1, s2) == (202, 202)
    redis = Redis.from_url(server_redis_url)
    store = JobStore(redis, api.settings)
    owner = api.users["user-free"]
    saw_parked = False
    first, second = j1["job_id"], j2["job_id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    while loop.time() < deadline:
        a, b = await store.get(first), await store.get(second)
        assert a is not None and b is not None
        assert not (a.status == JobState.RUNNING and b.status == JobState.RUNNING), "both ran at once"
        if a.status == JobState.RUNNING and b.status == JobState.QUEUED and b.progress.phase == "waiting":
            saw_parked = saw_parked or second in await parked_jobs(redis, store.keys, owner)
        if a.status.terminal and b.status.terminal:
            break
        await asyncio.sleep(0.02)
    assert saw_parked, "the second job was never seen waiting while the first ran"
    assert (a.status, b.status) == (JobState.SUCCEEDED, JobState.SUCCEEDED), (a.error, b.error)
    assert b.attempt == 1  # waiting consumed no attempt
    assert b.started_at is not None and a.finished_at is not None and b.started_at >= a.finished_at
    assert await running_jobs(redis, store.keys, owner) == set()
    await redis.aclose()


async def test_pro_runs_at_most_three_at_once(
    auth_api: Any, http: aiohttp.ClientSession, fake: Any, server_redis_url: str
) -> None:
    fake.render_time = 1.0
    api = await auth_api(limits=FAST, backend_slots=6, worker_concurrency=6)
    key = await api.key(Role.PRO)
    ids = []
    for i in range(5):
        status, body = await _submit(http, api, key, {**TINY, "prompt": f"p{i}"})
        assert status == 202
        ids.append(body["job_id"])
    redis = Redis.from_url(server_redis_url)
    snapshots = await _watch(JobStore(redis, api.settings), api.users["user-pro"], ids)
    most = max(sum(j.status == JobState.RUNNING for j in snap.values()) for snap in snapshots)
    assert most == 3, most
    assert all(j.status == JobState.SUCCEEDED for j in snapshots[-1].values())
    await redis.aclose()


async def test_a_parked_job_can_be_canceled(
    auth_api: Any, http: aiohttp.ClientSession, fake: Any, server_redis_url: str
) -> None:
    fake.render_time = 1.0
    api = await auth_api(limits=FAST)
    key = await api.key(Role.FREE)
    ids = [(await _submit(http, api, key, {**TINY, "prompt": p}))[1]["job_id"] for p in ("a", "b", "c")]
    redis = Redis.from_url(server_redis_url)
    store = JobStore(redis, api.settings)
    for _ in range(200):  # wait until the first runs and the others are parked
        if len(await parked_jobs(redis, store.keys, api.users["user-free"])) == 2:
            break
        await asyncio.sleep(0.02)
    async with http.delete(api.url(f"/api/v1/jobs/{ids[1]}"), headers=auth(key)) as r:
        assert r.status == 200 and (await r.json())["status"] == "canceled"
    snapshots = await _watch(store, api.users["user-free"], ids)
    final = snapshots[-1]
    assert [final[i].status for i in ids] == [JobState.SUCCEEDED, JobState.CANCELED, JobState.SUCCEEDED]
    await redis.aclose()


async def test_batches_obey_the_role_items_per_batch_and_count_each_item(
    auth_api: Any, http: aiohttp.ClientSession
) -> None:
    limits = {"free": {"requests_per_minute": 10_000, "max_batch_items": 20},
              "pro": {"requests_per_minute": 10_000, "max_batch_items": 4}}  # fmt: skip
    api = await auth_api(run_worker=False, limits=limits)
    free, pro = await api.key(Role.FREE), await api.key(Role.PRO)

    async def batch(key: str, n: int) -> tuple[int, Any]:
        body = {"base": TINY, "sweep": {"seed": list(range(1, n + 1))}}
        async with http.post(api.url("/api/v1/batches"), json=body, headers=auth(key)) as r:
            return r.status, await r.json()

    assert (await batch(pro, 4))[0] == 202
    status, answer = await batch(pro, 5)
    assert status == 403 and answer["error"]["details"]["limit"] == 4
    status, answer = await batch(free, 11)  # within FREE's (raised) batch size, over its daily 10 jobs
    assert status == 402 and answer["error"]["code"] == "QUOTA_EXCEEDED"
    assert (await batch(free, 10))[0] == 202  # each item counts: the day's quota is now used up
    assert (await _submit(http, api, free))[0] == 402


async def test_an_internal_key_sends_a_200_item_sweep_with_the_default_limits(
    auth_api: Any, http: aiohttp.ClientSession
) -> None:
    api = await auth_api(run_worker=False)
    body = {"base": TINY, "sweep": {"seed": list(range(100)), "cfg_scale": [5, 7]}}
    async with http.post(api.url("/api/v1/batches"), json=body, headers=auth(await api.key(Role.INTERNAL))) as r:
        assert r.status == 202, await r.text()
        assert (await r.json())["total"] == 200
    pro = await api.key(Role.PRO)
    body = {"base": TINY, "sweep": {"seed": list(range(101))}}
    async with http.post(api.url("/api/v1/batches"), json=body, headers=auth(pro)) as r:
        err = (await r.json())["error"]
        assert r.status == 403 and err["details"] == {"field": "items", "value": 101, "limit": 100, "role": "pro"}
        assert "split it into batches of at most 100" in err["message"]
    async with http.get(api.url("/api/v1/me"), headers=auth(pro)) as r:
        limits = (await r.json())["limits"]
        assert (limits["max_batch_items"], limits["max_images_per_job"]) == (100, 4)


def test_the_quota_day_is_the_utc_date_across_midnight_both_ways() -> None:
    from datetime import UTC, datetime

    from comfyflow.api.auth_policy import utc_day

    midnight = datetime(2026, 12, 3, tzinfo=UTC).timestamp()
    for t in (midnight - 0.001, midnight, midnight + 86399.999, midnight + 86400, midnight - 86400 * 400, midnight):
        assert utc_day(t) == datetime.fromtimestamp(t, UTC).strftime("%Y%m%d"), t
