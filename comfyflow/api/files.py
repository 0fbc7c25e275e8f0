"""Uploads (input images for img2img), artifact downloads through signed links, and the model list."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import uuid
import warnings
from urllib.parse import unquote

from PIL import Image
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow.api import downloads
from comfyflow.api.http import TooLarge, UnsupportedMediaType
from comfyflow.errors import Gone, NotFound, ValidationError

bp = Blueprint("files")
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
KEY = re.compile(r"^[A-Za-z0-9_./-]{1,512}$")


def inspect_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(content type, width, height) of an acceptable image. Refuses other types and decompression bombs
    by reading the header only, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt, (w, h) = img.format, img.size
            if w * h > max_pixels:
                raise ValidationError(
                    f"The image is {w}x{h} = {w * h} pixels; at most {max_pixels} are accepted.",
                    details=[{"field": "image", "message": "too many pixels"}],
                )
            img.verify()
    except ValidationError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationError("The image is a decompression bomb; refused.", details=[{"field": "image"}]) from None
    except Exception as exc:
        raise ValidationError(
            f"The upload is not a readable image ({type(exc).__name__}); send a PNG, JPEG or WebP file.",
            details=[{"field": "image"}],
        ) from None
    if fmt not in FORMATS:
        raise UnsupportedMediaType(f"Image format {fmt} is not accepted; send PNG, JPEG or WebP.")
    return FORMATS[fmt], w, h


@bp.post("/api/v1/uploads")
async def upload(request: Request) -> HTTPResponse:
    """Store an input image (multipart field ``image``, or a raw image body) for img2img."""
    settings = request.app.ctx.settings
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        part = request.files.get("image") if request.files else None
        if part is None:
            raise ValidationError("Send the image in a multipart field named 'image'.", details=[{"field": "image"}])
        data = part.body
    elif ctype in FORMATS.values():
        data = request.body or b""
    else:
        raise UnsupportedMediaType(
            f"Content-Type {ctype or 'missing'!r}: send multipart/form-data with an 'image' field, or the image "
            "itself as image/png, image/jpeg or image/webp."
        )
    if len(data) > settings.max_upload_bytes:
        raise TooLarge(f"The image has {len(data)} bytes; at most {settings.max_upload_bytes} are accepted.")
    if not data:
        raise ValidationError("The image is empty.", details=[{"field": "image"}])
    # Pillow and sha256 of up to max_upload_bytes: CPU work, off the loop that also runs workers' heartbeats.
    content_type, width, height = await asyncio.to_thread(inspect_image, data, settings.max_upload_pixels)
    digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    upload_id = uuid.uuid4().hex
    owner = request.ctx.principal.id
    stored = await request.app.ctx.rt.storage.put(f"uploads/{owner}/{upload_id}", data, content_type=content_type)
    body = {"upload_id": upload_id, "content_type": content_type, "width": width, "height": height,
            "size": stored.size, "sha256": digest}  # fmt: skip
    return json(body, status=201)


@bp.route("/api/v1/artifacts/<key:path>", methods=["GET", "HEAD"])
async def artifact(request: Request, key: str) -> HTTPResponse | None:
    """Serve a stored artifact through a signed, expiring link, streamed, with Range support."""
    key = unquote(key)
    if not KEY.match(key) or ".." in key.split("/"):
        raise NotFound("No such artifact.")
    request.app.ctx.links.verify(key, request.args.get("expires"), request.args.get("sig"))
    storage = request.app.ctx.rt.storage
    info = await storage.info(key)
    if info is None:
        job_id = key.split("/")[1] if key.startswith("jobs/") else ""
        job = await request.app.ctx.rt.store.get(job_id) if job_id else None
        if job is not None and job.status.value == "expired":
            raise Gone("This artifact was deleted by the retention policy.")
        raise NotFound("No such artifact.")
    etag = f'"{info.sha256[:32]}"' if info.sha256 else f'"{info.size}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": "private, max-age=300"}
    if request.headers.get("if-none-match") == etag:
        return HTTPResponse(status=304, headers=headers)
    return await downloads.send(request, key, info, headers)  # streamed in chunks, bounded per process


@bp.get("/api/v1/models")
async def models(request: Request) -> HTTPResponse:
    """Models and samplers the backends offer (their /object_info, cached). No host is named: how many
    backends answered is all a caller learns of them (INTERNAL callers have /api/v1/backends)."""
    folders: dict[str, set[str]] = {}
    samplers: set[str] = set()
    schedulers: set[str] = set()
    answering = 0
    backends = request.app.ctx.rt.backends
    for backend in backends.values():
        try:
            caps = await backend.capabilities()
        except Exception:
            continue
        answering += 1
        for folder, names in caps.models.items():
            folders.setdefault(folder, set()).update(names)
        samplers.update(caps.samplers)
        schedulers.update(caps.schedulers)
    body = {
        "checkpoints": sorted(folders.get("checkpoints", set())),
        "models": {k: sorted(v) for k, v in folders.items()},
        "samplers": sorted(samplers),
        "schedulers": sorted(schedulers),
        "backends": {"total": len(backends), "answering": answering},
    }
    return json(body)
