"""Example: comfyflow inside your own Prefect flow, written only with Prefect and ``comfyflow.prefect``.

txt2img (a hero image) -> img2img (the hero in a style) -> a batch of upscales of the styled image (one per seed).
It calls a comfyflow API from wherever a Prefect worker runs it, with the URL and key from a saved block::

    prefect block register -m comfyflow.prefect
    python -c "from comfyflow.prefect import ComfyflowCredentials as C
    C(url='http://127.0.0.1:8000', api_key='cf_live_...').save('comfyflow')"
    prefect work-pool create comfyflow-examples --type process
    prefect deploy --name comfyflow-example          # from prefect.yaml
    prefect deployment run comfyflow-example/comfyflow-example
    prefect worker start --pool comfyflow-examples
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from comfyflow.prefect import ComfyflowCredentials, generate, img2img, submit_batch, wait_for_batch


@flow(name="comfyflow-example")
async def hero_upscales(
    prompt: str = "a lighthouse on a cliff at dawn",
    style: str = "oil painting, thick brush strokes",
    upscales: int = 3,
    scale: int = 2,
    steps: int = 20,
    width: int = 512,
    height: int = 512,
    credentials_block: str = "comfyflow",
) -> dict[str, Any]:
    """A hero image, the hero in a style, and ``upscales`` upscaled versions of the styled image."""
    credentials = await ComfyflowCredentials.load(credentials_block)
    size = {"width": width, "height": height, "steps": steps}
    hero = await generate(credentials, prompt=prompt, **size)
    styled = await img2img(credentials, hero, prompt=f"{prompt}, {style}", denoise=0.6, **size)
    seeds = [(styled.seed or 0) + 1 + i for i in range(upscales)]
    batch = await submit_batch(
        credentials,
        base={"prompt": f"{prompt}, {style}", "width": width * scale, "height": height * scale, "steps": steps,
              "denoise": 0.3},
        sweep={"seed": seeds},
        image=styled,
        name="upscales",
    )  # fmt: skip
    done = await wait_for_batch(credentials, batch)
    get_run_logger().info("hero %s -> styled %s -> %d upscales in batch %s", hero.job_id, styled.job_id,
                          len(done.items), done.batch_id)  # fmt: skip
    return {
        "hero": hero.job_id,
        "styled": styled.job_id,
        "batch": done.batch_id,
        "upscaled": [item.job_id for item in done.items],
    }
