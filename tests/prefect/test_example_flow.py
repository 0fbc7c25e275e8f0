"""The example flow (flows/prefect_example.py), deployed with ``prefect deploy`` from prefect.yaml and run by a
Prefect process worker as a flow run of that deployment, end to end on a served comfyflow; then the artifacts
comfyflow published on its own runs (the jobs' ``generate`` runs and the batch's run), read back from the Prefect
API with the right links."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterTaskRunId,
)

from comfyflow.client import AsyncClient
from tests.prefect_runs import task_runs

ROOT = Path(__file__).resolve().parents[2]
POOL = "comfyflow-examples"
pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(420)]


async def run_cli(*args: str, api_url: str, timeout: float) -> str:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "INFO"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prefect", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output = (await asyncio.wait_for(proc.communicate(), timeout))[0].decode()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, output[-4000:]
    return output


async def artifacts_of(flow_run_id: Any, *, want: set[str], timeout: float = 30) -> list[Any]:
    """The artifacts of a flow run once those of every type in ``want`` are there (they are published after)."""
    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    async with get_client() as client:
        for _ in range(int(timeout / 0.2)):
            found = await client.read_artifacts(artifact_filter=flt)
            if want <= {a.type for a in found}:
                return found  # type: ignore[no-any-return]
            await asyncio.sleep(0.2)
    raise AssertionError(f"flow run {flow_run_id} has artifacts {[a.type for a in found]}, not all of {want}")


async def test_example_flow_deployed_and_run_by_a_prefect_worker(comfyflow_api, fake, prefect_api_url) -> None:  # type: ignore[no-untyped-def]
    async with get_client() as client:
        if POOL not in {p.name for p in await client.read_work_pools()}:
            await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    await run_cli("--no-prompt", "deploy", "--name", "comfyflow-example", api_url=prefect_api_url, timeout=120)
    params = {"credentials_block": comfyflow_api.block, "upscales": 2, "steps": 2, "width": 64, "height": 64}
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("comfyflow-example/comfyflow-example")
        assert deployment.work_pool_name == POOL and deployment.entrypoint == "flows/prefect_example.py:hero_upscales"
        flow_run = await client.create_flow_run_from_deployment(deployment.id, parameters=params)
    worker = await run_cli("worker", "start", "--pool", POOL, "--run-once", api_url=prefect_api_url, timeout=300)

    async with get_client() as client:
        run = await client.read_flow_run(flow_run.id)
        assert run.state is not None and run.state.is_completed(), worker[-6000:]
    tasks = await task_runs(flow_run.id, 4)  # recorded from events, in batches: once all are final
    names = sorted(t.name.rsplit("-", 1)[0] for t in tasks)
    assert names == ["comfyflow-generate", "comfyflow-img2img", "comfyflow-submit-batch", "comfyflow-wait-for-batch"]
    assert all(t.state is not None and t.state.is_completed() for t in tasks)

    # On comfyflow: hero -> styled (img2img of the hero) -> a batch of 2 upscales (img2img of the styled image)
    base, key = comfyflow_api.base, comfyflow_api.key
    async with AsyncClient(base, api_key=key) as api:
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # a job names its flow run when Prefect has made it, which may be after the job ended
            jobs = [job async for job in api.list()]
            if all(j.flow_run_id for j in jobs) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        batches = await api._call("GET", "/api/v1/batches")
        (batch,) = batches["items"]
        items = [item async for item in api.batch_items(batch["batch_id"])]
    assert len(jobs) == 4 and all(j.status.value == "succeeded" for j in jobs)
    assert sum(fake.prompts_posted.values()) == 4, "each image rendered once"
    by_id = {j.job_id: j for j in jobs}
    upscales = [by_id[i.job_id] for i in items]
    assert batch["name"] == "upscales" and batch["status"] == "succeeded" and len(upscales) == 2
    assert all(u.request["kind"] == "img2img" and u.request["width"] == 128 for u in upscales)
    singles = sorted((j for j in jobs if j.batch_id is None), key=lambda j: j.created_at)
    hero, styled = singles
    assert hero.request["kind"] == "txt2img" and styled.request["kind"] == "img2img"

    # The user's own flow run: each task linked its job or batch (its page in the web console this API serves)
    async with get_client() as client:
        for t in tasks:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[t.id]))
            )
            if t.name.startswith("comfyflow-wait"):
                assert not found
                continue
            (link,) = found
            assert f"({base}/ui/#/" in link.data

    # comfyflow's own runs: a link to the job with its first image, and its table, on every generate run ...
    async with aiohttp.ClientSession() as http:
        for job in jobs:
            assert job.flow_run_id
            found = {a.type: a for a in await artifacts_of(job.flow_run_id, want={"markdown", "table"})}
            link, picture = found["markdown"].data.split("\n\n")
            assert link == f"[job {job.job_id}]({base}/ui/#/jobs/{job.job_id})"
            image_url = picture.removeprefix(f"![first output of job {job.job_id}](").removesuffix(")")
            rows = {r["what"]: r["value"] for r in json.loads(found["table"].data)}
            assert rows["job"] == job.job_id and rows["status"] == "succeeded"
            assert job.result is not None and rows["seed"] == job.result.seed and rows["backend"] == fake.url
            assert rows["render"].endswith(" s") and rows["output 0"].startswith(job.result.artifacts[0].key)
            assert image_url.startswith(f"{base}/api/v1/artifacts/")
            async with http.get(image_url) as r:  # the picture the Prefect UI shows
                assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")
    # ... and on the batch's run: its progress (100 % at the end), a link to the batch and its table
    batch_run = batch["flow_run_id"]
    found = {a.type: a for a in await artifacts_of(batch_run, want={"progress", "markdown", "table"})}
    assert found["progress"].data == 100.0
    assert found["markdown"].data == f"[batch {batch['batch_id']}]({base}/ui/#/batches/{batch['batch_id']})"
    rows = {r["what"]: r["value"] for r in json.loads(found["table"].data)}
    assert rows["status"] == "succeeded" and rows["items"] == 2 and rows["items succeeded"] == 2
