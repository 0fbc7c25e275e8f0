"""API-format ComfyUI graphs for the typed requests (txt2img, img2img) and raw workflows.

Node ids are fixed strings so the same request always builds the same graph (ComfyUI's cache and our
artifact order both key on them). Links are ``["<node id>", <output index>]``; CheckpointLoaderSimple's
outputs are MODEL 0, CLIP 1, VAE 2.
"""

from __future__ import annotations

from typing import Any

from comfyflow.errors import GraphInvalid, ValidationError
from comfyflow.models import Img2ImgRequest, RawGraphRequest, Txt2ImgRequest
from comfyflow.plugins.protocols import Capabilities

Graph = dict[str, dict[str, Any]]


def default_model(capabilities: Capabilities) -> str:
    """The checkpoint used when a request names none: the first one the backend lists.

    Raises:
        GraphInvalid: when the backend has no checkpoint at all.
    """
    checkpoints = capabilities.models.get("checkpoints") or []
    if not checkpoints:
        raise GraphInvalid(
            "the backend has no checkpoint model; put a .safetensors file in ComfyUI's models/checkpoints",
            details={"folder": "checkpoints", "available": []},
        )
    return checkpoints[0]


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _sampling(
    request: Txt2ImgRequest, graph: Graph, *, model: str, seed: int, latent: list[Any], denoise: float
) -> Graph:
    graph["1"] = _node("CheckpointLoaderSimple", ckpt_name=model)
    graph["2"] = _node("CLIPTextEncode", text=request.prompt, clip=["1", 1])
    graph["3"] = _node("CLIPTextEncode", text=request.negative_prompt, clip=["1", 1])
    graph["5"] = _node(
        "KSampler",
        model=["1", 0],
        seed=seed,
        steps=request.steps,
        cfg=request.cfg_scale,
        sampler_name=request.sampler,
        scheduler=request.scheduler,
        positive=["2", 0],
        negative=["3", 0],
        latent_image=latent,
        denoise=denoise,
    )
    return graph


def txt2img(request: Txt2ImgRequest, *, model: str, seed: int, filename_prefix: str) -> Graph:
    graph: Graph = {
        "4": _node(
            "EmptyLatentImage", width=request.width, height=request.height, batch_size=request.batch_size
        )
    }
    _sampling(request, graph, model=model, seed=seed, latent=["4", 0], denoise=1.0)
    graph["6"] = _node("VAEDecode", samples=["5", 0], vae=["1", 2])
    graph["7"] = _node("SaveImage", images=["6", 0], filename_prefix=filename_prefix)
    return dict(sorted(graph.items(), key=lambda kv: int(kv[0])))


def img2img(
    request: Img2ImgRequest, *, model: str, seed: int, filename_prefix: str, input_image: str
) -> Graph:
    """LoadImage -> ImageScale (if the request sets width/height) -> VAEEncode -> KSampler(denoise) -> ..."""
    graph: Graph = {"10": _node("LoadImage", image=input_image)}
    pixels: list[Any] = ["10", 0]
    if {"width", "height"} & request.model_fields_set:
        graph["11"] = _node(
            "ImageScale", image=pixels, upscale_method="lanczos", width=request.width, height=request.height,
            crop="center",
        )  # fmt: skip
        pixels = ["11", 0]
    graph["12"] = _node("VAEEncode", pixels=pixels, vae=["1", 2])
    latent: list[Any] = ["12", 0]
    if request.batch_size > 1:
        graph["13"] = _node("RepeatLatentBatch", samples=latent, amount=request.batch_size)
        latent = ["13", 0]
    _sampling(request, graph, model=model, seed=seed, latent=latent, denoise=request.denoise)
    graph["6"] = _node("VAEDecode", samples=["5", 0], vae=["1", 2])
    graph["7"] = _node("SaveImage", images=["6", 0], filename_prefix=filename_prefix)
    return dict(sorted(graph.items(), key=lambda kv: int(kv[0])))


def build_graph(
    request: Txt2ImgRequest | Img2ImgRequest | RawGraphRequest,
    *,
    seed: int,
    filename_prefix: str,
    model: str | None = None,
    input_image: str | None = None,
) -> Graph:
    """The API-format graph for a request.

    Args:
        request: a validated job request.
        seed: the seed actually used (the caller resolves -1 to a random one); ignored for raw graphs.
        filename_prefix: SaveImage's prefix (e.g. ``comfyflow/<job>_<attempt>``); ignored for raw graphs.
        model: the checkpoint, resolved by the caller (``request.model`` or ``default_model(capabilities)``).
        input_image: the LoadImage name returned by ``upload_image`` (img2img only).
    Raises:
        ValidationError: when a typed request lacks its model, or img2img its input image.
    """
    if isinstance(request, RawGraphRequest):
        return {node_id: node.model_dump(mode="json") for node_id, node in request.workflow.items()}
    model = model or request.model
    if not model:
        raise ValidationError("no checkpoint given; pass model= (e.g. default_model(capabilities))")
    if not 0 <= seed < 2**64:
        raise ValidationError(f"seed {seed} is outside 0..2**64-1; resolve -1 to a random seed first")
    if isinstance(request, Img2ImgRequest):
        if not input_image:
            raise ValidationError("img2img needs input_image= (the name returned by upload_image)")
        return img2img(
            request, model=model, seed=seed, filename_prefix=filename_prefix, input_image=input_image
        )
    return txt2img(request, model=model, seed=seed, filename_prefix=filename_prefix)
