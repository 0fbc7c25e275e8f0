"""Jobs over a real server: CRUD, list with cursor and status filter, cancel (queued and running), retry,
Idempotency-Key under concurrency, and jobs scoped to their owner."""

from __future__ import annotations

import asyncio
from typing import Any

from sanic import Request

from comfyflow.api.policy import OpenPolicy
from comfyflow.core.attempt import prompt_id_for
from comfyflow.errors import Unauthorized
from comfyflow.models import Principal, Role
from tests.api.helpers import error_of, fields_of, get_job, submit, tiny, until_true, wait_for


async def test_submit_get_and_result(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    job = await submit(http, base, tiny(seed=-1, labels=["exp-1"], priority="high"))
    assert job["status"] == "queued" and job["attempt"] == 1 and job["priority"] == "high"
    assert job["labels"] == ["exp-1"] and job["links"]["events"] == f"/api/v1/jobs/{job['job_id']}/events"
    done = await wait_for(http, base, job["job_id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["seed"] not in (None, -1), "the seed actually used is reported"
    art = result["artifacts"][0]
    assert art["content_type"] == "image/png" and art["size"] > 0 and len(art["sha256"]) == 64
    assert art["url"].startswith(base) and "sig=" in art["url"]
    assert done["progress"]["value"] == 1.0
    durations = done["durations"]
    assert all(durations[k] is not None and durations[k] >= 0 for k in ("queue_wait", "render", "store", "total"))
    assert done["created_at"] and done["finished_at"]
    assert "owner" not in done and "worker" not in done


async def test_unknown_and_malformed_job_ids_are_404(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    for job_id in ("0" * 32, "nope", "..%2F..%2Fetc", "x" * 300):
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/retry"), ("GET", "/events")):
            async with http.request(method, f"{base}/api/v1/jobs/{job_id}{path}") as r:
                err = await error_of(r, 404, "NOT_FOUND")
                assert "job_id" in err["details"]


async def test_list_pages_with_cursor_and_filters_by_status(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    ids = [(await submit(http, base, tiny(prompt=f"fox {i}")))["job_id"] for i in range(7)]
    for job_id in ids[:3]:
        async with http.delete(f"{base}/api/v1/jobs/{job_id}") as r:
            assert r.status == 200 and (await r.json())["status"] == "canceled"

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{base}/api/v1/jobs", params=params) as r:
            assert r.status == 200
            page = await r.json()
        pages += 1
        assert len(page["items"]) <= 3 and page["limit"] == 3
        seen += [j["job_id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids)), "newest first, each job once"
    assert pages == 3

    async with http.get(f"{base}/api/v1/jobs", params={"status": "canceled"}) as r:
        assert [j["job_id"] for j in (await r.json())["items"]] == list(reversed(ids[:3]))
    async with http.get(f"{base}/api/v1/jobs", params={"status": "queued", "limit": "2"}) as r:
        page = await r.json()
        assert [j["job_id"] for j in page["items"]] == [ids[6], ids[5]] and page["next_cursor"]
    async with http.get(f"{base}/api/v1/jobs", params={"status": "queued", "cursor": page["next_cursor"]}) as r:
        assert [j["job_id"] for j in (await r.json())["items"]] == [ids[4], ids[3]]
    async with http.get(f"{base}/api/v1/jobs", params={"status": "succeeded"}) as r:
        assert (await r.json()) == {"items": [], "next_cursor": None, "limit": 20}

    for params, field in (
        ({"status": "done"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
    ):
        async with http.get(f"{base}/api/v1/jobs", params=params) as r:
            assert fields_of(await error_of(r, 422, "VALIDATION_ERROR")) == {field}


async def test_cancel_queued_job_never_starts(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    # an API without workers holds the job queued; the cancel lands before any worker exists
    base = await api_factory(run_worker=False)
    queued = await submit(http, base)
    async with http.delete(f"{base}/api/v1/jobs/{queued['job_id']}") as r:
        assert r.status == 200
        canceled = await r.json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    async with http.delete(f"{base}/api/v1/jobs/{queued['job_id']}") as r:
        assert r.status == 200 and (await r.json())["status"] == "canceled", "cancel is idempotent"

    # now workers come up on the same queue: they run the next job, never the canceled one
    base2 = await api_factory(run_worker=True)
    other = await submit(http, base2)
    assert (await wait_for(http, base2, other["job_id"]))["status"] == "succeeded"
    await asyncio.sleep(0.3)
    job = await get_job(http, base2, queued["job_id"])
    assert job["status"] == "canceled" and job["started_at"] is None and job["attempt"] == 1
    assert prompt_id_for(queued["job_id"], 1) not in fake.prompts_posted
    assert list(fake.prompts_posted) == [prompt_id_for(other["job_id"], 1)]
    async with http.get(f"{base2}/api/v1/jobs/{queued['job_id']}/events") as r:
        statuses = [line for line in (await r.text()).splitlines() if line.startswith("data:")]
    assert not any('"running"' in s for s in statuses), statuses


async def test_cancel_running_job_interrupts_backend(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 6.0
    base = await api_factory()
    job = await submit(http, base, tiny(steps=20))
    pid = prompt_id_for(job["job_id"], 1)
    await until_true(lambda: pid in fake.prompts_posted, what="the fake got the prompt")
    await wait_for(http, base, job["job_id"], lambda j: j["status"] == "running")
    async with http.delete(f"{base}/api/v1/jobs/{job['job_id']}") as r:
        assert r.status in (200, 202)
        answer = await r.json()
    # the answer is the real state: canceled once the worker stopped it (it waits a few seconds for that)
    assert answer["status"] == "canceled" or (answer["status"] == "running" and answer["cancel_requested"])
    done = await wait_for(http, base, job["job_id"], timeout=10)
    assert done["status"] == "canceled", done
    assert pid in fake.interrupts, fake.interrupts
    await asyncio.sleep(0.5)
    again = await get_job(http, base, job["job_id"])
    assert again["status"] == "canceled" and again["attempt"] == 1, "a canceled job is never retried"
    assert fake.prompts_posted == {pid: 1}


async def test_retry_failed_job(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    fake.faults.fail_node_types = {"KSampler"}  # a node error: permanent, so the job fails at once
    job = await submit(http, base)
    failed = await wait_for(http, base, job["job_id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "EXECUTION_ERROR", failed
    assert failed["error"]["transient"] is False

    fake.faults.fail_node_types = set()
    async with http.post(f"{base}/api/v1/jobs/{job['job_id']}/retry") as r:
        assert r.status == 202 and r.headers["Location"] == f"/api/v1/jobs/{job['job_id']}"
        retried = await r.json()
    assert retried["status"] == "queued" and retried["attempt"] == 2 and retried["error"] is None
    done = await wait_for(http, base, job["job_id"])
    assert done["status"] == "succeeded" and done["attempt"] == 2, done

    async with http.post(f"{base}/api/v1/jobs/{job['job_id']}/retry") as r:
        err = await error_of(r, 409, "CONFLICT")
        assert err["details"] == {"status": "succeeded"}


async def test_missing_model_fails_with_the_model_list(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    job = await submit(http, base, tiny(model="no-such-model.safetensors"))
    failed = await wait_for(http, base, job["job_id"])
    assert failed["status"] == "failed" and failed["attempt"] == 1, "a missing model is not retried"
    err = failed["error"]
    assert err["code"] == "INVALID_GRAPH"
    assert "no-such-model.safetensors" in err["message"]
    assert all(name in str(err) for name in fake.checkpoints), err
    assert not fake.prompts_posted, "refused before anything was queued on ComfyUI"


async def test_concurrent_posts_with_one_idempotency_key_make_one_job(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    headers = {"Idempotency-Key": "order-42"}

    async def post() -> tuple[int, Any]:
        async with http.post(f"{base}/api/v1/jobs", json=tiny(), headers=headers) as r:
            return r.status, await r.json()

    answers = await asyncio.gather(*[post() for _ in range(20)])
    created = {body["job_id"] for status, body in answers if status == 202}
    assert len(created) == 1, answers
    for status, body in answers:
        assert status in (202, 409), body
        if status == 409:
            assert body["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    async with http.get(f"{base}/api/v1/jobs") as r:
        assert [j["job_id"] for j in (await r.json())["items"]] == list(created)

    # later: the same key and body answer with the original job, flagged as a replay
    async with http.post(f"{base}/api/v1/jobs", json=tiny(), headers=headers) as r:
        assert r.status == 202 and r.headers["Idempotent-Replayed"] == "true"
        assert (await r.json())["job_id"] in created
    # the same key with another body is refused
    async with http.post(f"{base}/api/v1/jobs", json=tiny(prompt="another"), headers=headers) as r:
        err = await error_of(r, 422, "IDEMPOTENCY_CONFLICT")
        assert err["details"]["job_id"] in created
    # field order and explicit defaults do not make a different body
    same = {"steps": 2, "height": 64, "width": 64, "prompt": "a red fox", "priority": "normal"}
    async with http.post(f"{base}/api/v1/jobs", json=same, headers=headers) as r:
        assert r.status == 202 and (await r.json())["job_id"] in created
    for bad in ("has space", "x" * 256, "é"):
        async with http.post(f"{base}/api/v1/jobs", json=tiny(), headers={"Idempotency-Key": bad}) as r:
            assert fields_of(await error_of(r, 422, "VALIDATION_ERROR")) == {"Idempotency-Key"}


class HeaderPolicy(OpenPolicy):
    """A test policy: the caller is whoever X-Test-User names; everything else as with auth off."""

    async def authenticate(self, request: Request) -> Principal:
        user = request.headers.get("x-test-user")
        if not user:
            raise Unauthorized("Send X-Test-User.")
        return Principal(id=user, role=Role.INTERNAL)


async def test_jobs_and_idempotency_keys_are_scoped_to_the_caller(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, policy=HeaderPolicy())
    alice, bob = {"X-Test-User": "alice"}, {"X-Test-User": "bob"}
    a = await submit(http, base, tiny(), headers={**alice, "Idempotency-Key": "k1"})
    b = await submit(http, base, tiny(), headers={**bob, "Idempotency-Key": "k1"})
    assert a["job_id"] != b["job_id"], "the same key from two callers is two jobs"
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/retry"), ("GET", "/events")):
        async with http.request(method, f"{base}/api/v1/jobs/{a['job_id']}{path}", headers=bob) as r:
            await error_of(r, 404, "NOT_FOUND")
    async with http.get(f"{base}/api/v1/jobs", headers=bob) as r:
        assert [j["job_id"] for j in (await r.json())["items"]] == [b["job_id"]]
    async with http.get(f"{base}/api/v1/jobs/{a['job_id']}", headers=alice) as r:
        assert r.status == 200
    async with http.get(f"{base}/api/v1/jobs") as r:
        await error_of(r, 401, "UNAUTHORIZED")


async def test_filtered_list_continues_past_the_scan_limit(api_factory, http, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from comfyflow.api import jobs

    monkeypatch.setattr(jobs, "SCAN_LIMIT", 3)  # each request stops after the first batch (200 jobs)
    base = await api_factory(run_worker=False, max_queue_depth=10_000)
    oldest = await submit(http, base)
    async with http.delete(f"{base}/api/v1/jobs/{oldest['job_id']}") as r:
        assert r.status == 200
    for _ in range(21):
        await asyncio.gather(*[submit(http, base) for _ in range(10)])
    found, cursor, pages = [], None, 0
    while True:
        params = {"status": "canceled", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{base}/api/v1/jobs", params=params) as r:
            page = await r.json()
        pages += 1
        found += [j["job_id"] for j in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert found == [oldest["job_id"]], "a page that stopped scanning hands out a cursor to go on"
    assert pages == 2
