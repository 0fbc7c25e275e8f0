"""Pipelines over the live API (workers in the server process, no Prefect): list, start by name with
parameters, follow the steps and their artifacts, cancel, resume a failed run."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp

from comfyflow.core.pipelines import step_job_id


async def get_json(http: Any, url: str) -> dict[str, Any]:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def wait_for(http: Any, url: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    for _ in range(int(timeout / 0.05)):
        data = await get_json(http, url)
        if done(data):
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} still {data}")


async def test_three_step_pipeline_over_the_api(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    listed = await get_json(http, f"{base}/api/v1/pipelines")
    names = {p["name"]: p for p in listed["items"]}
    assert {"hero-variations", "identity-expressions"} <= set(names)
    assert "variations" in names["hero-variations"]["params"]["properties"]
    body = {"params": {"prompt": "a lighthouse", "variations": 1, "steps": 2, "width": 256, "height": 256},
            "priority": "high", "labels": ["demo"]}  # fmt: skip
    async with http.post(f"{base}/api/v1/pipelines/hero-variations/runs", json=body) as r:
        assert r.status == 202, await r.text()
        started = await r.json()
        assert started["status"] == "queued" and r.headers["Location"] == f"/api/v1/pipeline-runs/{started['run_id']}"
    url = f"{base}/api/v1/pipeline-runs/{started['run_id']}"
    run = await wait_for(http, url, lambda d: d["status"] in ("succeeded", "failed"))
    assert run["status"] == "succeeded", run
    assert [s["step"] for s in run["steps"]] == ["hero", "variation-0", "upscale-0"]
    assert all(s["status"] == "succeeded" and s["result"]["artifacts"] for s in run["steps"])
    jobs = {s["step"]: await get_json(http, f"{base}{s['links']['self']}") for s in run["steps"]}
    assert all(j["priority"] == "high" and "demo" in j["labels"] for j in jobs.values())
    # each step's input is the previous step's output: the bytes of the upload are the artifact's
    for src, dst in (("hero", "variation-0"), ("variation-0", "upscale-0")):
        art = jobs[src]["result"]["artifacts"][0]
        async with http.get(art["url"]) as r:
            data = await r.read()
        assert hashlib.sha256(data).hexdigest() == art["sha256"]
        assert jobs[dst]["request"]["init_image"]
    assert (jobs["upscale-0"]["request"]["width"], jobs["upscale-0"]["request"]["height"]) == (512, 512)
    assert run["result"]["upscaled"][0]["job_id"] == jobs["upscale-0"]["job_id"]
    assert sum(fake.prompts_posted.values()) == 3
    mine = await get_json(http, f"{base}/api/v1/pipeline-runs")
    assert [r["run_id"] for r in mine["items"]] == [started["run_id"]]


async def test_bad_names_and_parameters_are_refused(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    async with http.post(f"{base}/api/v1/pipelines/nope/runs", json={}) as r:
        assert r.status == 404 and "hero-variations" in (await r.json())["error"]["message"]
    async with http.post(f"{base}/api/v1/pipelines/hero-variations/runs", json={"params": {"variations": 2}}) as r:
        err = (await r.json())["error"]
        assert r.status == 422 and err["details"][0]["field"] == "prompt", err
    async with http.post(f"{base}/api/v1/pipelines/hero-variations/runs", json={"params": {}, "x": 1}) as r:
        assert r.status == 422
    async with http.get(f"{base}/api/v1/pipeline-runs/{'0' * 32}") as r:
        assert r.status == 404


async def test_cancel_a_run_then_resume_it(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 0.5
    base = await api_factory()
    body = {"params": {"identity": "a sailor", "expressions": ["smiling", "sad"], "steps": 2, "sheet": False}}
    async with http.post(f"{base}/api/v1/pipelines/identity-expressions/runs", json=body) as r:
        run_id = (await r.json())["run_id"]
    url = f"{base}/api/v1/pipeline-runs/{run_id}"
    await wait_for(http, url, lambda d: d["status"] == "running" and d["steps"])
    async with http.delete(url) as r:
        assert r.status == 202
    run = await wait_for(http, url, lambda d: d["status"] == "canceled")
    assert [s["step"] for s in run["steps"]] == ["identity"] and run["steps"][0]["status"] == "canceled"
    async with http.delete(url) as r:
        assert r.status == 409
    fake.render_time = 0.0
    await asyncio.sleep(1.0)  # the interrupted prompt ends on ComfyUI (see tests/batches: retry after cancel)
    async with http.post(f"{url}/retry") as r:
        assert r.status == 202, await r.text()
    run = await wait_for(http, url, lambda d: d["status"] in ("succeeded", "failed"))
    assert run["status"] == "succeeded", run
    assert {s["step"] for s in run["steps"]} == {"identity", "expression-0", "expression-1"}
    identity = await get_json(http, f"{base}/api/v1/jobs/{step_job_id(run_id, 'identity')}")
    assert identity["attempt"] == 2, "the canceled step ran again as its next attempt"


async def test_steps_count_against_the_daily_quota(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    from tests.batches.test_batch_api import HeaderPolicy  # FREE callers with a daily quota of 5

    base = await api_factory(policy=HeaderPolicy())
    body = {"params": {"prompt": "a lighthouse", "variations": 3, "steps": 1, "width": 64, "height": 64}}
    async with aiohttp.ClientSession(headers={"X-User": "eve"}) as eve:
        async with eve.post(f"{base}/api/v1/pipelines/hero-variations/runs", json=body) as r:
            url = f"{base}{r.headers['Location']}"
        run = await wait_for(eve, url, lambda d: d["status"] in ("succeeded", "failed"))
        async with http.get(url) as r:
            assert r.status == 404, "another caller does not see it"
    assert run["status"] == "failed" and "daily job quota of 5" in run["error"]["message"], run
    assert len(run["steps"]) == 5, "1 hero + 3 variations + 1 upscale fit in the quota of 5, the 6th step did not"
