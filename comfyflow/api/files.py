"""Uploads (input images for img2img), artifact downloads through signed links, and the model list."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import uuid
import warnings
from typing import Any
from urllib.parse import unquote

from PIL import Image
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, raw

from comfyflow.api.http import TooLarge, UnsupportedMediaType
from comfyflow.errors import Gone, NotFound, ValidationError

bp = Blueprint("files")
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
KEY = re.compile(r"^[A-Za-z0-9_./-]{1,512}$")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
async def artifact(request: Request, key: str) -> HTTPResponse:
    """Serve a stored artifact through a signed, expiring link, with Range support."""
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
    size = info.size
    etag = f'"{info.sha256[:32]}"' if info.sha256 else f'"{size}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": "private, max-age=300"}
    ctype = info.content_type or "application/octet-stream"
    if request.headers.get("if-none-match") == etag:
        return HTTPResponse(status=304, headers=headers)
    rng = request.headers.get("range")
    if rng:
        m = RANGE.match(rng.strip())
        start, end = _range(m, size)
        if start is None:
            return HTTPResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        data = b"" if request.method == "HEAD" else await storage.read_range(key, start, end + 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return raw(data, status=206, content_type=ctype, headers={**headers, "Content-Length": str(end - start + 1)})
    data = b"" if request.method == "HEAD" else await storage.get(key)
    return raw(data, content_type=ctype, headers={**headers, "Content-Length": str(size)})


def _range(m: Any, size: int) -> tuple[int | None, int]:
    if not m or (not m.group(1) and not m.group(2)):
        return None, 0
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        start, end = max(0, size - int(m.group(2))), size - 1
    if start >= size or start > end:
        return None, 0
    return start, end


@bp.get("/api/v1/models")
async def models(request: Request) -> HTTPResponse:
    """Models and samplers the backends offer (their /object_info, cached)."""
    per_backend: dict[str, Any] = {}
    folders: dict[str, set[str]] = {}
    samplers: set[str] = set()
    schedulers: set[str] = set()
    for url, backend in request.app.ctx.rt.backends.items():
        try:
            caps = await backend.capabilities()
        except Exception as exc:
            per_backend[url] = {"status": "down", "detail": str(exc)}
            continue
        per_backend[url] = {"status": "ok", "models": caps.models}
        for folder, names in caps.models.items():
            folders.setdefault(folder, set()).update(names)
        samplers.update(caps.samplers)
        schedulers.update(caps.schedulers)
    body = {
        "checkpoints": sorted(folders.get("checkpoints", set())),
        "models": {k: sorted(v) for k, v in folders.items()},
        "samplers": sorted(samplers),
        "schedulers": sorted(schedulers),
        "backends": per_backend,
    }
    return json(body)

