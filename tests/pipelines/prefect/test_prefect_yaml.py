"""prefect.yaml parses, and ``prefect deploy --all`` creates its deployments on a real Prefect server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.prefect


def test_prefect_yaml_names_every_flow() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d["entrypoint"] for d in config["deployments"]}
    assert deployments == {
        "generate": "flows/generate.py:generate",
        "batch": "flows/batch.py:batch",
        "hero-variations": "flows/pipelines.py:pipeline",
        "identity-expressions": "flows/pipelines.py:pipeline",
        "comfyflow-example": "flows/prefect_example.py:hero_upscales",
    }
    for entrypoint in deployments.values():
        path, _, name = entrypoint.partition(":")
        assert f"def {name}(" in (ROOT / path).read_text()


async def test_prefect_deploy_all(prefect_api_url) -> None:  # type: ignore[no-untyped-def]
    async with get_client() as client:
        pools = {p.name for p in await client.read_work_pools()}
        for pool in ("comfyflow", "comfyflow-examples"):
            if pool not in pools:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
    assert proc.returncode == 0, output[-3000:]
    async with get_client() as client:
        found = {(d.name, d.entrypoint, d.work_pool_name) for d in await client.read_deployments()}
    for name, entrypoint in [
        ("generate", "flows/generate.py:generate"),
        ("batch", "flows/batch.py:batch"),
        ("hero-variations", "flows/pipelines.py:pipeline"),
        ("identity-expressions", "flows/pipelines.py:pipeline"),
    ]:
        assert (name, entrypoint, "comfyflow") in found, found
    assert ("comfyflow-example", "flows/prefect_example.py:hero_upscales", "comfyflow-examples") in found
