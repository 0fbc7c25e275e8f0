"""Pipelines from Python, without Prefect: steps are jobs, artifacts flow between them as uploads."""

from __future__ import annotations

import asyncio

from comfyflow.core.pipelines import PipelineContext, PipelineRunStore, RunState, pipeline, step_job_id
from comfyflow.models import JobState
from flows.expressions import identity_expressions
from flows.hero import hero_variations
from tests.core.conftest import running_worker


async def test_three_step_pipeline_from_python_passes_artifacts(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    async with running_worker(rt):
        run = await asyncio.wait_for(
            hero_variations.run(rt, {"prompt": "a lighthouse", "variations": 1, "steps": 2, "seed": 7}), 60
        )
    assert run.status == RunState.SUCCEEDED, run
    steps = await PipelineRunStore(rt.store).steps(run.run_id)
    assert sorted(steps) == ["hero", "upscale-0", "variation-0"]
    hero, variation, upscale = [await rt.store.get(steps[n]) for n in ("hero", "variation-0", "upscale-0")]
    assert all(j is not None and j.status == JobState.SUCCEEDED for j in (hero, variation, upscale))
    assert hero is not None and variation is not None and upscale is not None
    # the hero's image is the variation's input, the variation's image the upscale's input
    for src, dst in ((hero, variation), (variation, upscale)):
        upload = dst.request["init_image"]
        assert src.result is not None
        assert await rt.storage.get(f"uploads/local/{upload}") == await rt.storage.get(src.result.artifacts[0].key)
    assert (upscale.request["width"], upscale.request["height"]) == (1024, 1024)
    assert f"pipeline-run:{run.run_id}" in hero.labels and "step:hero" in hero.labels
    assert run.result["upscaled"][0]["job_id"] == upscale.job_id
    assert sum(fake.prompts_posted.values()) == 3


async def test_fan_out_and_fan_in(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    params = {"identity": "a sailor", "expressions": ["smiling", "angry", "sad"], "steps": 2}
    async with running_worker(rt):
        run = await asyncio.wait_for(identity_expressions.run(rt, params), 60)
    assert run.status == RunState.SUCCEEDED, run
    steps = await PipelineRunStore(rt.store).steps(run.run_id)
    assert sorted(steps) == ["expression-0", "expression-1", "expression-2", "identity", "sheet"]
    sheet = await rt.store.get(steps["sheet"])
    assert sheet is not None and sheet.status == JobState.SUCCEEDED, sheet
    loads = [n for n in sheet.request["workflow"].values() if n["class_type"] == "LoadImage"]
    assert len(loads) == 3 and len({n["inputs"]["image"] for n in loads}) == 3


async def test_a_failed_step_fails_the_run_after_the_retry_window(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])

    @pipeline("two-steps")
    async def two(p: PipelineContext, _params: object) -> str:
        first = await p.txt2img("first", prompt="fox", steps=2)
        await p.img2img("second", first, prompt="fox at night", steps=2)
        return "done"

    fake.faults.fail_node_types = {"VAEEncode"}
    async with running_worker(rt):
        run = await asyncio.wait_for(two.run(rt, retry_window=0.5), 60)
    assert run.status == RunState.FAILED and run.error is not None
    assert run.error.code == "STEP_FAILED" and "second" in run.error.message
    assert (await rt.store.get(step_job_id(run.run_id, "first"))).status == JobState.SUCCEEDED  # type: ignore[union-attr]
