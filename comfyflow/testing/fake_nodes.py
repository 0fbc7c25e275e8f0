"""Simulated node behaviour for the fake ComfyUI server.

Nothing here runs a model. Tensors are replaced by small value objects that carry what later nodes need
(sizes, batch, a content key); images that get saved are solid colours derived from those keys, so the same
inputs always give the same pixels. Unknown-but-valid node classes pass a value of the right type through.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from comfyflow.testing.fake_graph import input_names

#: Bigger images are written scaled down to this many pixels (the reported size is not changed).
MAX_WRITTEN_PIXELS = 4096 * 4096
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class OutOfMemoryError(RuntimeError):
    """Stands in for ``torch.OutOfMemoryError`` (same reported type name)."""


OutOfMemoryError.__module__ = "torch"

OOM_MESSAGE = (
    "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
    "Currently allocated     : 7.21 GiB\n"
    "Requested               : 1.50 GiB\n"
    "Device limit            : 8.00 GiB\n"
    "Free (according to CUDA): 0 bytes\n"
    "PyTorch limit (set by user-supplied memory fraction)\n"
    "                        : 17179869184.00 GiB"
)
OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."
)


class InjectedFailure(RuntimeError):
    """Raised for node classes listed in ``Faults.fail_node_types``."""


InjectedFailure.__module__ = "comfyflow.testing"


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rgb_of(key: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(key.encode()).digest()
    return digest[0], digest[1], digest[2]


@dataclass(frozen=True)
class FakeImage:
    width: int
    height: int
    colors: tuple[tuple[int, int, int], ...]

    @property
    def batch(self) -> int:
        return len(self.colors)

    def __str__(self) -> str:
        return f"IMAGE(batch={self.batch}, height={self.height}, width={self.width}, channels=3)"


@dataclass(frozen=True)
class FakeLatent:
    width: int
    height: int
    keys: tuple[str, ...]

    @property
    def batch(self) -> int:
        return len(self.keys)

    def __str__(self) -> str:
        return f"LATENT(batch={self.batch}, height={self.height // 8}, width={self.width // 8}, channels=4)"


@dataclass(frozen=True)
class Token:
    """An opaque value (MODEL, CLIP, VAE, CONDITIONING, ...)."""

    kind: str
    key: str

    def __str__(self) -> str:
        return f"<{self.kind} {self.key}>"


class Dirs:
    """ComfyUI's ``folder_paths`` for one fake server: input/, output/, temp/ under a root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.input = str((root / "input").resolve())
        self.output = str((root / "output").resolve())
        self.temp = str((root / "temp").resolve())
        for d in (self.input, self.output, self.temp):
            os.makedirs(d, exist_ok=True)

    def by_type(self, type_name: str | None) -> str | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(type_name or "")

    def annotated(self, name: str) -> tuple[str, str | None]:
        if name.endswith("[output]"):
            return name[:-9], self.output
        if name.endswith("[input]"):
            return name[:-8], self.input
        if name.endswith("[temp]"):
            return name[:-7], self.temp
        return name, None

    def annotated_path(self, name: str) -> str:
        name, base = self.annotated(name)
        return os.path.join(base or self.input, name)

    def exists_annotated(self, name: str) -> bool:
        return os.path.exists(self.annotated_path(name))

    def input_files(self) -> list[str]:
        try:
            names = os.listdir(self.input)
        except FileNotFoundError:
            return []
        return sorted(
            n
            for n in names
            if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(self.input, n))
        )


def save_image_path(prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, int, str]:
    """ComfyUI's ``folder_paths.get_save_image_path``: (folder, file stem, next counter, subfolder)."""
    if "%" in prefix:
        now = time.localtime()
        for token, value in (
            ("%width%", width),
            ("%height%", height),
            ("%year%", now.tm_year),
            ("%month%", f"{now.tm_mon:02}"),
            ("%day%", f"{now.tm_mday:02}"),
            ("%hour%", f"{now.tm_hour:02}"),
            ("%minute%", f"{now.tm_min:02}"),
            ("%second%", f"{now.tm_sec:02}"),
        ):
            prefix = prefix.replace(token, str(value))
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}\n         output_dir: {output_dir}"
            f"\n         commonpath: {os.path.commonpath((output_dir, os.path.abspath(folder)))}"
        )
    pattern = re.compile(re.escape(filename) + r"_(\d+)_")
    counter = 0
    try:
        for name in os.listdir(folder):
            m = pattern.match(name)
            if m:
                counter = max(counter, int(m.group(1)))
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
    return folder, filename, counter + 1, subfolder


def write_png(path: str, width: int, height: int, color: tuple[int, int, int], texts: dict[str, str]) -> None:
    scale = math.sqrt(MAX_WRITTEN_PIXELS / (width * height)) if width * height > MAX_WRITTEN_PIXELS else 1.0
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    Image.new("RGB", size, color).save(path, pnginfo=info, compress_level=1)


class NodeContext(Protocol):
    node_id: str
    class_type: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    dirs: Dirs
    preview_infix: str

    async def ticks(self, total: int) -> None: ...
    async def write_pngs(
        self, jobs: list[tuple[str, int, int, tuple[int, int, int], dict[str, str]]]
    ) -> None: ...


NodeFn = Callable[[NodeContext, dict[str, Any], dict[str, Any]], Awaitable[tuple[tuple[Any, ...], Any]]]
NODES: dict[str, NodeFn] = {}


def node(*names: str) -> Callable[[NodeFn], NodeFn]:
    def register(fn: NodeFn) -> NodeFn:
        for name in names:
            NODES[name] = fn
        return fn

    return register


def _as_image(value: Any) -> FakeImage:
    if isinstance(value, FakeImage):
        return value
    if isinstance(value, FakeLatent):
        return FakeImage(value.width, value.height, tuple(rgb_of(k) for k in value.keys))
    return FakeImage(64, 64, ((128, 128, 128),))


def _as_latent(value: Any) -> FakeLatent:
    if isinstance(value, FakeLatent):
        return value
    if isinstance(value, FakeImage):
        return FakeLatent(value.width, value.height, tuple(key_of("enc", c) for c in value.colors))
    return FakeLatent(512, 512, (key_of("latent", str(value)),))


@node("CheckpointLoaderSimple", "CheckpointLoader", "ImageOnlyCheckpointLoader", "unCLIPCheckpointLoader")
async def _checkpoint(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    name = str(inputs.get("ckpt_name"))
    return tuple(Token(kind, key_of(kind, name)) for kind in info["output"]), None


@node("CLIPTextEncode")
async def _clip_text_encode(
    ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]
) -> tuple[Any, Any]:
    return (Token("CONDITIONING", key_of("cond", inputs.get("text"), str(inputs.get("clip")))),), None


@node("EmptyLatentImage", "EmptySD3LatentImage")
async def _empty_latent(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    w, h, n = int(inputs["width"]), int(inputs["height"]), int(inputs.get("batch_size", 1))
    return (FakeLatent(w, h, tuple(key_of("empty", w, h, i) for i in range(n))),), None


@node("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
async def _sampler(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    latent = _as_latent(inputs.get("latent_image"))
    await ctx.ticks(int(inputs.get("steps") or 20))
    params = {k: str(v) for k, v in inputs.items() if k != "latent_image"}
    keys = tuple(key_of("sample", params, k, i) for i, k in enumerate(latent.keys))
    result = FakeLatent(latent.width, latent.height, keys)
    return ((result, result) if len(info["output"]) == 2 else (result,)), None


@node("VAEDecode", "VAEDecodeTiled")
async def _vae_decode(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    return (_as_image(_as_latent(inputs.get("samples"))),), None


@node("VAEEncode", "VAEEncodeTiled")
async def _vae_encode(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    return (_as_latent(_as_image(inputs.get("pixels"))),), None


def _read_image(path: str) -> tuple[int, int, int, str]:
    with Image.open(path) as img:  # raises PIL.UnidentifiedImageError for a file that is not an image
        width, height = img.size
        frames = max(1, getattr(img, "n_frames", 1))
    return width, height, frames, hashlib.sha256(Path(path).read_bytes()).hexdigest()


@node("LoadImage", "LoadImageMask")
async def _load_image(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    width, height, frames, digest = _read_image(ctx.dirs.annotated_path(inputs["image"]))
    image = FakeImage(width, height, tuple(rgb_of(f"{digest}:{i}") for i in range(frames)))
    mask = Token("MASK", digest[:16])
    return ((image, mask) if len(info["output"]) == 2 else (mask,)), None


@node("EmptyImage")
async def _empty_image(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    c = int(inputs.get("color", 0))
    color = ((c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF)
    return (
        FakeImage(int(inputs["width"]), int(inputs["height"]), (color,) * int(inputs["batch_size"])),
    ), None


@node("ImageInvert")
async def _invert(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    img = _as_image(inputs.get("image"))
    colors = tuple((255 - r, 255 - g, 255 - b) for r, g, b in img.colors)
    return (FakeImage(img.width, img.height, colors),), None


@node("ImageScale", "ImageScaleBy", "LatentUpscale", "LatentUpscaleBy")
async def _scale(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    src = inputs.get("image", inputs.get("samples"))
    base = _as_latent(src) if ctx.class_type.startswith("Latent") else _as_image(src)
    if "scale_by" in inputs:
        w = round(base.width * float(inputs["scale_by"]))
        h = round(base.height * float(inputs["scale_by"]))
    else:
        w, h = int(inputs.get("width", 0)), int(inputs.get("height", 0))
        if w == 0 and h == 0:
            w, h = base.width, base.height
        elif w == 0:
            w = max(1, round(base.width * h / base.height))
        elif h == 0:
            h = max(1, round(base.height * w / base.width))
    if isinstance(base, FakeLatent):
        return (FakeLatent(max(1, w), max(1, h), base.keys),), None
    return (FakeImage(max(1, w), max(1, h), base.colors),), None


@node("ImageUpscaleWithModel")
async def _upscale_model(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    img = _as_image(inputs.get("image"))
    await ctx.ticks(math.ceil(img.width / 480) * math.ceil(img.height / 480))
    return (FakeImage(img.width * 2, img.height * 2, img.colors),), None


@node("GetImageSize")
async def _image_size(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    img = _as_image(inputs.get("image"))
    return (img.width, img.height, img.batch), None


@node("PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean")
async def _primitive(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    return (inputs.get("value"),), None


@node("SaveImage", "PreviewImage")
async def _save_image(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    img = _as_image(inputs.get("images"))
    if ctx.class_type == "PreviewImage":
        out_dir, kind, prefix = ctx.dirs.temp, "temp", "ComfyUI" + ctx.preview_infix
    else:
        out_dir, kind, prefix = ctx.dirs.output, "output", str(inputs.get("filename_prefix", "ComfyUI"))
    folder, stem, counter, subfolder = save_image_path(prefix, out_dir, img.width, img.height)
    texts = {"prompt": json.dumps(ctx.prompt)}
    extra_pnginfo = ctx.extra_data.get("extra_pnginfo")
    if isinstance(extra_pnginfo, dict):
        texts.update({k: json.dumps(v) for k, v in extra_pnginfo.items()})
    results, jobs = [], []
    for batch_number, color in enumerate(img.colors):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        jobs.append((os.path.join(folder, name), img.width, img.height, color, texts))
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    await ctx.write_pngs(jobs)
    return (), {"images": results}


async def _generic(ctx: NodeContext, inputs: dict[str, Any], info: dict[str, Any]) -> tuple[Any, Any]:
    """Any other known class: each output passes through the first input of the same type, else a stand-in."""
    by_type: dict[Any, Any] = {}
    for name in input_names(info):
        if name not in inputs:
            continue
        spec = info["input"].get("required", {}).get(name) or info["input"].get("optional", {}).get(name)
        if spec is not None:
            by_type.setdefault(spec[0] if isinstance(spec[0], str) else "COMBO", inputs[name])
    seed = key_of(ctx.class_type, {k: str(v) for k, v in inputs.items()})
    outputs: list[Any] = []
    for i, kind in enumerate(info.get("output", [])):
        if kind in by_type:
            outputs.append(by_type[kind])
        elif kind == "IMAGE":
            outputs.append(FakeImage(64, 64, (rgb_of(seed),)))
        elif kind == "LATENT":
            outputs.append(FakeLatent(512, 512, (key_of(seed, i),)))
        else:
            outputs.append(
                {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind, Token(str(kind), seed))
            )
    return tuple(outputs), None


def node_function(class_type: str) -> NodeFn:
    return NODES.get(class_type, _generic)
