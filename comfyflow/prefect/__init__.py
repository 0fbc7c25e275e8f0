"""comfyflow inside your own Prefect flows: a credentials block and tasks that call a comfyflow API.

    from prefect import flow
    from comfyflow.prefect import ComfyflowCredentials, generate, img2img

    @flow
    async def fox() -> None:
        credentials = await ComfyflowCredentials.load("comfyflow")
        first = await generate(credentials, prompt="a red fox in the snow", steps=20)
        await img2img(credentials, first, prompt="a red fox in the snow, watercolor", denoise=0.5)

Register the block type once with ``prefect block register -m comfyflow.prefect``. This package needs only the
API client (``comfyflow.client``) and Prefect: it runs under any Prefect worker that can reach the API.
"""

from comfyflow.prefect.credentials import ComfyflowCredentials
from comfyflow.prefect.errors import BatchFailed, JobFailed, is_transient
from comfyflow.prefect.results import ArtifactLink, BatchResult, BatchSubmission, GenerationResult
from comfyflow.prefect.tasks import generate, img2img, submit_batch, wait_for_batch

__all__ = [
    "ArtifactLink",
    "BatchFailed",
    "BatchResult",
    "BatchSubmission",
    "ComfyflowCredentials",
    "GenerationResult",
    "JobFailed",
    "generate",
    "img2img",
    "is_transient",
    "submit_batch",
    "wait_for_batch",
]
