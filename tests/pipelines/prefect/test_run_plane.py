"""Batches and pipeline runs as Prefect flow runs: named after them, tagged, linked to their jobs' runs; Retry
pressed in the Prefect UI (sent here through Prefect's API, as the UI does) on a failed step re-runs that step."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import AwaitingRetry

from comfyflow.core.attempt import prompt_id_for
from comfyflow.core.pipelines import step_job_id
from tests.prefect_runs import task_runs

pytestmark = pytest.mark.prefect


async def get_json(http: Any, url: str) -> dict[str, Any]:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def wait_for(http: Any, url: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    for _ in range(int(timeout / 0.1)):
        data = await get_json(http, url)
        if done(data):
            return data
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} still {data}")


async def flow_run_state(run_id: str, name: str, timeout: float = 20) -> Any:
    async with get_client() as client:
        for _ in range(int(timeout / 0.1)):
            run = await client.read_flow_run(UUID(run_id))
            if run.state and run.state.name == name:
                return run
            await asyncio.sleep(0.1)
    raise AssertionError(f"flow run {run_id} is {run.state.name if run.state else None}, not {name}")


async def test_failed_step_retried_from_the_prefect_ui_and_the_pipeline_finishes(
    prefect_api_url, api_factory, http, fake
) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(prefect_enabled=True, prefect_api_url=prefect_api_url)
    fake.faults.fail_node_types = {"VAEEncode"}  # img2img steps fail at run time: the second step fails
    body = {"params": {"prompt": "a lighthouse", "variations": 1, "steps": 1, "width": 64, "height": 64}}
    async with http.post(f"{base}/api/v1/pipelines/hero-variations/runs", json=body) as r:
        assert r.status == 202, await r.text()
        run = await r.json()
    url = f"{base}{r.headers['Location']}"
    run_id = run["run_id"]
    waiting = await wait_for(http, url, lambda d: d["status"] == "waiting")
    assert "variation-0" in waiting["message"]
    second = step_job_id(run_id, "variation-0")
    # the job names its flow run once Prefect has made it (recorded beside the attempt, never in its way)
    job = await wait_for(http, f"{base}/api/v1/jobs/{second}", lambda d: d["flow_run_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "EXECUTION_ERROR"
    await flow_run_state(job["flow_run_id"], "Failed")
    fake.faults.fail_node_types = set()
    async with get_client() as client:  # what the UI's Retry button sends
        await client.set_flow_run_state(
            UUID(job["flow_run_id"]), AwaitingRetry(message="Retry from the UI"), force=True
        )
    done = await wait_for(http, url, lambda d: d["status"] in ("succeeded", "failed"), timeout=90)
    assert done["status"] == "succeeded", done
    steps = {s["step"]: s for s in done["steps"]}
    assert [s["step"] for s in done["steps"]] == ["hero", "variation-0", "upscale-0"]
    assert steps["hero"]["attempt"] == 1 and steps["variation-0"]["attempt"] == 2 and steps["upscale-0"]["attempt"] == 1
    hero = step_job_id(run_id, "hero")
    posted = fake.prompts_posted
    assert posted.get(prompt_id_for(hero, 1)) == 1 and not posted.get(prompt_id_for(hero, 2)), "hero not re-rendered"
    assert posted.get(prompt_id_for(second, 1)) == 1 and posted.get(prompt_id_for(second, 2)) == 1
    assert sum(posted.values()) == 4
    # In Prefect: the run is a flow run named after it, tagged, whose task runs are the steps; the step's
    # generate run is tagged with the pipeline run, and it is that same run which the UI retried.
    again = await get_json(http, f"{base}/api/v1/jobs/{second}")
    assert again["flow_run_id"] == job["flow_run_id"]
    pipeline_run = await flow_run_state(done["flow_run_id"], "Completed")
    assert pipeline_run.name == f"hero-variations-{run_id[:12]}"
    assert {"pipeline:hero-variations", f"pipeline-run:{run_id}", "role:internal", "priority:normal"} <= set(
        pipeline_run.tags
    )
    tasks = await task_runs(pipeline_run.id, 3)  # recorded from events, in batches: once all are final
    async with get_client() as client:
        linked = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"label:pipeline-run:{run_id}"]))
        )
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == ["step:hero", "step:upscale-0", "step:variation-0"]
    assert {f"job:{second}"} <= {tag for t in tasks for tag in t.tags}
    assert len(linked) == 3, [r.name for r in linked]


async def test_batch_is_a_flow_run_named_and_tagged_with_its_items_linked(prefect_api_url, api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(prefect_enabled=True, prefect_api_url=prefect_api_url)
    body = {"name": "seeds", "base": {"prompt": "fox", "steps": 1, "width": 64, "height": 64},
            "sweep": {"seed": [1, 2, 3]}, "priority": "high"}  # fmt: skip
    async with http.post(f"{base}/api/v1/batches", json=body) as r:
        batch = await r.json()
    url = f"{base}/api/v1/batches/{batch['batch_id']}"
    done = await wait_for(http, url, lambda d: d["status"] == "succeeded" and d["flow_run_id"], timeout=60)
    flow_run = await flow_run_state(done["flow_run_id"], "Completed")
    bid = batch["batch_id"]
    assert flow_run.name == f"batch-seeds-{bid[:12]}"
    assert {f"batch:{bid}", "role:internal", "priority:high"} <= set(flow_run.tags)
    async with get_client() as client:
        items = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"label:batch:{bid}"]))
        )
    jobs = [await wait_for(http, f"{base}{i['links']['self']}", lambda d: d["flow_run_id"]) for i in done["items"]]
    assert sorted(str(r.id) for r in items) == sorted(j["flow_run_id"] for j in jobs)
    assert all(j["batch_id"] == bid for j in jobs)


async def test_retry_on_the_pipelines_own_flow_run_resumes_it(prefect_api_url, api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(prefect_enabled=True, prefect_api_url=prefect_api_url)
    fake.faults.fail_node_types = {"VAEEncode"}
    body = {"params": {"prompt": "a lighthouse", "variations": 1, "steps": 1, "width": 64, "height": 64},
            "retry_window_seconds": 0}  # fmt: skip
    async with http.post(f"{base}/api/v1/pipelines/hero-variations/runs", json=body) as r:
        url = f"{base}{r.headers['Location']}"
    failed = await wait_for(http, url, lambda d: d["status"] == "failed")
    assert failed["error"]["code"] == "STEP_FAILED" and "variation-0" in failed["error"]["message"]
    await flow_run_state(failed["flow_run_id"], "Failed")
    fake.faults.fail_node_types = set()
    async with get_client() as client:  # Retry pressed on the pipeline's own run
        await client.set_flow_run_state(UUID(failed["flow_run_id"]), AwaitingRetry(message="from the UI"), force=True)
    done = await wait_for(http, url, lambda d: d["status"] == "succeeded", timeout=60)
    assert done["flow_run_id"] == failed["flow_run_id"], "the retried flow run itself ran the rest"
    attempts = {s["step"]: s["attempt"] for s in done["steps"]}
    assert attempts == {"hero": 1, "variation-0": 2, "upscale-0": 1}
    await flow_run_state(done["flow_run_id"], "Completed")
