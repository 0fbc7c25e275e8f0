"""Checks of the files ComfyUI hands back, before anything is stored: an image output must start with its
format's magic bytes, decode completely with Pillow, and stay under a pixel limit (decompression bombs).

CPU work: call :func:`check_output` off the event loop (``asyncio.to_thread``), never on it.
"""

from __future__ import annotations

import io
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


def check_output(data: bytes, content_type: str, *, max_pixels: int, name: str = "output") -> None:
    """Raise BadOutput unless ``data`` is a whole, decodable image of ``content_type`` within ``max_pixels``.
    Other content types (video, audio, text, ...) are not checked here.

    Raises:
        BadOutput: wrong magic bytes, truncated or undecodable, or more pixels than allowed.
    """
    expected = IMAGE_FORMATS.get(content_type)
    if expected is None:
        return
    magics, formats = expected
    if not any(data.startswith(m) for m in magics) or (content_type == "image/webp" and data[8:12] != b"WEBP"):
        raise BadOutput(
            f"{name}: ComfyUI returned {len(data)} bytes that are not a {content_type} (they start with "
            f"{data[:8]!r}); nothing was stored",
            details={"file": name, "content_type": content_type, "reason": "magic"},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(formats)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadOutput(
                        f"{name}: {width}x{height} pixels is more than COMFYFLOW_MAX_OUTPUT_PIXELS ({max_pixels}); "
                        "a decompression bomb or a runaway graph; nothing was stored",
                        details={"file": name, "width": width, "height": height, "reason": "pixels"},
                    )
                img.verify()
            with Image.open(io.BytesIO(data), formats=list(formats)) as img:
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
