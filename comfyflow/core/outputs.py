"""Checks of the files ComfyUI hands back, before anything is stored: an image output must start with its
format's magic bytes, decode completely with Pillow, and stay under a pixel limit (decompression bombs).

They read the staged file (Pillow reads it in blocks; the decoded pixels, at most ``max_pixels``, are the only
large allocation). CPU and disk work: call :func:`check_output` off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import os
import warnings

from PIL import Image

from comfyflow.errors import BadOutput

#: Content type -> (magic prefixes, the Pillow format names it may decode as).
IMAGE_FORMATS: dict[str, tuple[tuple[bytes, ...], tuple[str, ...]]] = {
    "image/png": ((b"\x89PNG\r\n\x1a\n",), ("PNG",)),
    "image/jpeg": ((b"\xff\xd8\xff",), ("JPEG", "MPO")),
    "image/gif": ((b"GIF87a", b"GIF89a"), ("GIF",)),
    "image/webp": ((b"RIFF",), ("WEBP",)),
}


def check_output(path: str | os.PathLike[str], content_type: str, *, max_pixels: int, name: str = "output") -> None:
    """Raise BadOutput unless the file at ``path`` is a whole, decodable image of ``content_type`` within
    ``max_pixels``. Other content types (video, audio, text, ...) are not checked here.

    Raises:
        BadOutput: wrong magic bytes, truncated or undecodable, or more pixels than allowed.
    """
    expected = IMAGE_FORMATS.get(content_type)
    if expected is None:
        return
    magics, formats = expected
    with open(path, "rb") as fh:
        head = fh.read(12)
    if not any(head.startswith(m) for m in magics) or (content_type == "image/webp" and head[8:12] != b"WEBP"):
        raise BadOutput(
            f"{name}: ComfyUI returned {os.path.getsize(path)} bytes that are not a {content_type} (they start "
            f"with {head[:8]!r}); nothing was stored",
            details={"file": name, "content_type": content_type, "reason": "magic"},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=list(formats)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadOutput(
                        f"{name}: {width}x{height} pixels is more than COMFYFLOW_MAX_OUTPUT_PIXELS ({max_pixels}); "
                        "a decompression bomb or a runaway graph; nothing was stored",
                        details={"file": name, "width": width, "height": height, "reason": "pixels"},
                    )
                img.verify()
            with Image.open(path, formats=list(formats)) as img:
                img.load()  # verify() does not decode: a truncated image data stream shows only here
    except BadOutput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadOutput(
            f"{name}: {exc}; nothing was stored", details={"file": name, "reason": "pixels"}
        ) from exc
    except Exception as exc:
        raise BadOutput(
            f"{name}: ComfyUI returned a {content_type} that does not decode ({type(exc).__name__}: {exc}); "
            "truncated or corrupt; nothing was stored",
            details={"file": name, "content_type": content_type, "reason": "corrupt"},
        ) from exc
