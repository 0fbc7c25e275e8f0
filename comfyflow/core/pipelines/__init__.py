"""Pipelines: DAGs of generation steps composed in Python, each step a comfyflow job.

Example::

    @pipeline("restyle", params=RestyleParams)
    async def restyle(p: PipelineContext, params: RestyleParams) -> dict:
        base = await p.txt2img("base", prompt=params.prompt)
        styled = await p.img2img("styled", base, prompt=params.style, denoise=0.6)
        return {"image": await p.upscale("upscaled", styled, scale=2)}

    run = await restyle.run(runtime, {"prompt": "a red fox"})   # from Python (steps run on the workers)
"""

from comfyflow.core.pipelines.dsl import (
    Pipeline,
    PipelineContext,
    RunCanceled,
    StepFailed,
    StepOutput,
    pipeline,
    step_job_id,
)
from comfyflow.core.pipelines.registry import available, get, register
from comfyflow.core.pipelines.runs import PipelineRun, PipelineRunStore, RunState

__all__ = [
    "Pipeline",
    "PipelineContext",
    "PipelineRun",
    "PipelineRunStore",
    "RunCanceled",
    "RunState",
    "StepFailed",
    "StepOutput",
    "available",
    "get",
    "pipeline",
    "register",
    "step_job_id",
]
