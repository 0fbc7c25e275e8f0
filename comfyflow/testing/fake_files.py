"""Files and read-only endpoints of the fake ComfyUI server: ``/view``, ``/upload/image``, ``/object_info``,
``/system_stats``, ``/features``, ``/models``, ``/embeddings`` (ComfyUI 0.8.0's ``server.py`` semantics).
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import platform
import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from comfyflow.testing.fake_graph import NodeCatalog
from comfyflow.testing.fake_nodes import Dirs

MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {
    "supports_preview_metadata": True,
    "max_upload_size": MAX_UPLOAD_SIZE,
    "extension": {"manager": {"supports_v4": True}},
}
MODEL_FOLDERS = (
    "checkpoints configs loras vae text_encoders diffusion_models clip_vision style_models embeddings "
    "diffusers vae_approx controlnet gligen upscale_models latent_upscale_models custom_nodes hypernetworks "
    "photomaker classifiers model_patches audio_encoders"
).split()
_FORCE_DOWNLOAD = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}


def empty(status: int) -> web.Response:
    return web.Response(status=status)


class FileAndInfoRoutes:
    """Mixin for ``FakeComfyUI``: needs ``dirs``, ``catalog``, ``checkpoints``, ``host`` and ``port``."""

    dirs: Dirs
    catalog: NodeCatalog
    checkpoints: list[str]
    host: str
    port: int

    async def _view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        found = self._view_path(query)
        if isinstance(found, int):
            return empty(found)
        file, filename = found
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query or query.get("channel", "rgba") in ("rgb", "a"):
            body, content_type = self._convert(file, query)
            return web.Response(body=body, content_type=content_type, headers=disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        bad = getattr(getattr(self, "faults", None), "bad_output", "")
        if bad and filename.endswith(".png"):
            body = corrupt_png(await asyncio.to_thread(Path(file).read_bytes), bad)
            return web.Response(body=body, headers=disposition, content_type=content_type)
        if content_type in _FORCE_DOWNLOAD:
            content_type = "application/octet-stream"
        return web.FileResponse(file, headers={**disposition, "Content-Type": content_type})

    def _view_path(self, query: Any) -> int | tuple[str, str]:
        """ComfyUI's ``/view`` checks: the file to send, or the error status."""
        if "filename" not in query:
            return 404
        filename, output_dir = self.dirs.annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return 400
        if output_dir is None:
            output_dir = self.dirs.by_type(query.get("type", "output"))
        if output_dir is None:
            return 400
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                return 403
            output_dir = full_output_dir
        filename = os.path.basename(filename)
        file = os.path.join(output_dir, filename)
        return (file, filename) if os.path.isfile(file) else 404

    @staticmethod
    def _convert(file: str, query: Any) -> tuple[bytes, str]:
        buffer = BytesIO()
        with Image.open(file) as img:
            if "preview" in query:
                preview_info = query["preview"].split(";")
                image_format = preview_info[0]
                if image_format not in ["webp", "jpeg"] or "a" in query.get("channel", ""):
                    image_format = "webp"
                quality = int(preview_info[-1]) if preview_info[-1].isdigit() else 90
                out = (
                    img.convert("RGB") if image_format == "jpeg" or query.get("channel", "") == "rgb" else img
                )
                out.save(buffer, format=image_format, quality=quality)
                return buffer.getvalue(), f"image/{image_format}"
            if query.get("channel") == "rgb":
                img.convert("RGB").save(buffer, format="PNG")
            else:
                alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                alpha_img = Image.new("RGBA", img.size)
                alpha_img.putalpha(alpha)
                alpha_img.save(buffer, format="PNG")
            return buffer.getvalue(), "image/png"

    async def _upload_image(self, request: web.Request) -> web.StreamResponse:
        post = await request.post()
        image = post.get("image")
        upload_type = str(post.get("type") or "input")
        upload_dir = self.dirs.by_type(upload_type)
        if upload_dir is None:
            raise ValueError(f"unknown upload type {upload_type!r}")  # ComfyUI: UnboundLocalError -> 500
        if not (image and getattr(image, "file", None)) or not getattr(image, "filename", None):
            return empty(400)
        subfolder = str(post.get("subfolder", ""))
        overwrite = post.get("overwrite") in ("true", "1")
        name = self._store_upload(upload_dir, subfolder, image.filename, image.file.read(), overwrite)  # type: ignore[union-attr]
        if name is None:
            return empty(400)
        return web.json_response({"name": name, "subfolder": subfolder, "type": upload_type})

    @staticmethod
    def _store_upload(
        upload_dir: str, subfolder: str, filename: str, data: bytes, overwrite: bool
    ) -> str | None:
        """ComfyUI's ``image_upload``: same name and bytes = dedupe, else ``name (1).ext``; None = refused."""
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return None
        os.makedirs(folder, exist_ok=True)
        stem, ext = os.path.splitext(filename)
        i = 1
        while not overwrite and os.path.exists(filepath):
            if Path(filepath).read_bytes() == data:
                return filename
            filename = f"{stem} ({i}){ext}"
            filepath = os.path.join(folder, filename)
            i += 1
        Path(filepath).write_bytes(data)
        return filename

    async def _object_info(self, request: web.Request) -> web.StreamResponse:
        body = self.catalog.all_json(self.dirs.input_files())
        return web.Response(body=body, content_type="application/json")

    async def _object_info_one(self, request: web.Request) -> web.StreamResponse:
        node_class = request.match_info["node_class"]
        if node_class not in self.catalog:
            return web.json_response({})
        return web.json_response(
            {node_class: self.catalog.with_input_files(node_class, self.dirs.input_files())}
        )

    async def _system_stats(self, request: web.Request) -> web.StreamResponse:
        ram_total, ram_free = 16 * 1024**3, 12 * 1024**3
        return web.json_response(
            {
                "system": {
                    "os": "linux" if platform.system() == "Linux" else platform.system().lower(),
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": "0.8.0",
                    "required_frontend_version": "1.35.9",
                    "installed_templates_version": "0.7.67",
                    "required_templates_version": "0.7.67",
                    "python_version": platform.python_version(),
                    "pytorch_version": "2.14.1+cu130",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", self.host, "--port", str(self.port)],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": ram_total,
                        "vram_free": ram_free,
                        "torch_vram_total": ram_total,
                        "torch_vram_free": ram_free,
                    }
                ],
            }
        )

    async def _features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(SERVER_FEATURES)

    def _model_files(self, folder: str) -> list[str]:
        if folder == "checkpoints":
            return list(self.checkpoints)
        if folder == "upscale_models":
            spec = self.catalog.get("UpscaleModelLoader")["input"]["required"]["model_name"]
            return list(spec[1].get("options", []))
        return []

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(MODEL_FOLDERS)

    async def _models_folder(self, request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return empty(404)
        return web.json_response(self._model_files(folder))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])


def corrupt_png(data: bytes, how: str) -> bytes:
    """A real PNG made bad the ways ComfyUI outputs go bad: cut short, wrong magic bytes, or swapped for a
    decompression bomb (a tiny file that claims 100,000 x 100,000 pixels)."""
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "magic":
        return b"\x00" * 8 + data[8:]
    if how == "bomb":
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)
        idat = zlib.compress(b"\x00" * (1 + 100_000 // 8) * 64, 9)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    raise ValueError(f"unknown bad output {how!r}")
