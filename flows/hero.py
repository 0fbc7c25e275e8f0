"""Example pipeline ``hero-variations``: a hero image -> N variations of it -> each variation upscaled.

Each variation is upscaled as soon as it is done (the branches run side by side), so the DAG is::

    hero ─┬─ variation-0 ── upscale-0
          ├─ variation-1 ── upscale-1
          └─ ...
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from comfyflow.core.pipelines import PipelineContext, StepOutput, pipeline


class HeroParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000, description="The hero image.")
    negative_prompt: str = Field(default="", max_length=2000)
    variations: int = Field(default=4, ge=1, le=16, description="How many variations of the hero.")
    variation_prompts: list[str] = Field(
        default_factory=list, max_length=16, description="Added to the prompt of variation i (optional)."
    )
    denoise: float = Field(default=0.6, ge=0.05, le=1.0, description="How far variations move from the hero.")
    scale: float = Field(default=2.0, ge=1.0, le=4.0, description="Upscale factor (capped at 2048 px a side).")
    width: int = Field(default=512, ge=64, le=1024, multiple_of=8)
    height: int = Field(default=512, ge=64, le=1024, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    seed: int = Field(default=-1, ge=-1, description="Hero seed; variation i uses seed + 1 + i. -1 = random.")
    model: str | None = None


@pipeline("hero-variations", params=HeroParams)
async def hero_variations(p: PipelineContext, params: HeroParams) -> dict[str, object]:
    """A hero image, N variations of it, and each variation upscaled."""
    common = {"negative_prompt": params.negative_prompt, "steps": params.steps,
              **({"model": params.model} if params.model else {})}  # fmt: skip
    hero = await p.txt2img(
        "hero", prompt=params.prompt, width=params.width, height=params.height, seed=params.seed, **common
    )

    async def branch(i: int) -> tuple[StepOutput, StepOutput]:
        extra = params.variation_prompts[i] if i < len(params.variation_prompts) else f"variation {i + 1}"
        seed = params.seed + 1 + i if params.seed >= 0 else -1
        variation = await p.img2img(
            f"variation-{i}", hero, prompt=f"{params.prompt}, {extra}", denoise=params.denoise, seed=seed,
            width=params.width, height=params.height, **common,
        )  # fmt: skip
        return variation, await p.upscale(f"upscale-{i}", variation, scale=params.scale, steps=params.steps)

    branches = await p.all(*(branch(i) for i in range(params.variations)))
    return {
        "hero": hero,
        "variations": [v for v, _ in branches],
        "upscaled": [u for _, u in branches],
    }
