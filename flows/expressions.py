"""Example pipeline ``identity-expressions``: one identity render -> N expressions of that identity, and
(optionally) a contact sheet of them all, a fan-in step built as a raw ComfyUI graph::

    identity ─┬─ expression-smiling ──┐
              ├─ expression-angry ────┼─ sheet
              └─ ...                ──┘
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from comfyflow.core.pipelines import PipelineContext, StepOutput, pipeline


class ExpressionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: str = Field(min_length=1, max_length=2000, description="Who: e.g. 'portrait of a red-haired sailor'.")
    expressions: list[str] = Field(
        default_factory=lambda: ["smiling", "surprised", "angry", "sad"], min_length=1, max_length=16
    )
    denoise: float = Field(default=0.55, ge=0.05, le=1.0, description="Low keeps the identity, high the prompt.")
    sheet: bool = Field(default=True, description="Also stitch every expression into one contact sheet.")
    width: int = Field(default=512, ge=64, le=1024, multiple_of=8)
    height: int = Field(default=512, ge=64, le=1024, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    seed: int = Field(default=-1, ge=-1)
    model: str | None = None


def sheet_graph(count: int, prefix: str) -> dict[str, Any]:
    """LoadImage x count -> ImageStitch (left to right) -> SaveImage. Node "load-i" loads expression i."""
    graph: dict[str, Any] = {
        f"load-{i}": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}} for i in range(count)
    }
    last: list[Any] = ["load-0", 0]
    for i in range(1, count):
        graph[f"stitch-{i}"] = {
            "class_type": "ImageStitch",
            "inputs": {"image1": last, "image2": [f"load-{i}", 0], "direction": "right", "match_image_size": True,
                       "spacing_width": 8, "spacing_color": "white"},
        }  # fmt: skip
        last = [f"stitch-{i}", 0]
    graph["save"] = {"class_type": "SaveImage", "inputs": {"images": last, "filename_prefix": prefix}}
    return graph


@pipeline("identity-expressions", params=ExpressionParams)
async def identity_expressions(p: PipelineContext, params: ExpressionParams) -> dict[str, object]:
    """One identity render, then the same identity with each expression (and a contact sheet of them)."""
    common = {"steps": params.steps, "width": params.width, "height": params.height,
              **({"model": params.model} if params.model else {})}  # fmt: skip
    identity = await p.txt2img("identity", prompt=params.identity, seed=params.seed, **common)

    async def expression(i: int, name: str) -> StepOutput:
        seed = params.seed + 1 + i if params.seed >= 0 else -1
        prompt = f"{params.identity}, {name} expression"
        return await p.img2img(f"expression-{i}", identity, prompt=prompt, denoise=params.denoise, seed=seed, **common)

    faces = await p.all(*(expression(i, name) for i, name in enumerate(params.expressions)))
    out: dict[str, object] = {"identity": identity, "expressions": dict(zip(params.expressions, faces, strict=True))}
    if params.sheet:
        graph = sheet_graph(len(faces), f"comfyflow/sheet-{p.run_id[:12]}")
        out["sheet"] = await p.workflow("sheet", graph, inputs={f"load-{i}": face for i, face in enumerate(faces)})
    return out
