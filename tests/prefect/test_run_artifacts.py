"""Artifacts on comfyflow's pipeline runs, read back from the Prefect API (generate and batch runs: see
test_example_flow.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from comfyflow.client import AsyncClient
from tests.prefect.test_example_flow import artifacts_of

pytestmark = pytest.mark.prefect


async def test_pipeline_run_links_itself_and_tables_its_steps(comfyflow_api) -> None:  # type: ignore[no-untyped-def]
    base = comfyflow_api.base
    body = {"params": {"prompt": "a lighthouse", "variations": 1, "steps": 1, "width": 64, "height": 64}}
    async with AsyncClient(base, api_key=comfyflow_api.key) as api:
        run = await api._call("POST", "/api/v1/pipelines/hero-variations/runs", json=body)
        for _ in range(600):
            run = await api._call("GET", f"/api/v1/pipeline-runs/{run['run_id']}")
            if run["status"] in ("succeeded", "failed", "canceled") and run["flow_run_id"]:
                break
            await asyncio.sleep(0.1)
    assert run["status"] == "succeeded", run
    found = {a.type: a for a in await artifacts_of(run["flow_run_id"], want={"markdown", "table"})}
    assert found["markdown"].data == f"[pipeline run {run['run_id']}]({base}/api/v1/pipeline-runs/{run['run_id']})"
    rows = {r["step"]: r for r in json.loads(found["table"].data)}
    steps = {s["step"]: s for s in run["steps"]}
    assert set(rows) == set(steps) == {"hero", "variation-0", "upscale-0"}
    for name, row in rows.items():
        assert row["job"] == steps[name]["job_id"] and row["status"] == "succeeded"
        assert row["seed"] == steps[name]["result"]["seed"] and row["outputs"] == 1
