"""The output check alone: whole images of every format pass; wrong magic bytes, truncation, too many pixels
and a decompression bomb raise BadOutput."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from comfyflow.core.outputs import check_output
from comfyflow.errors import BadOutput
from comfyflow.testing.fake_files import corrupt_png


def _image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def staged(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Writes bytes to a staged file and returns its path (the check reads files, as the worker stages them)."""

    def write(data: bytes) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.out"
        path.write_bytes(data)
        return path

    return write


@pytest.mark.parametrize(("fmt", "ctype"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                            ("GIF", "image/gif")])  # fmt: skip
def test_check_output_accepts_whole_images_and_refuses_bad_ones(fmt: str, ctype: str, staged) -> None:  # type: ignore[no-untyped-def]
    good = _image(fmt)
    check_output(staged(good), ctype, max_pixels=32 * 24)
    check_output(staged(b"not an image at all"), "video/mp4", max_pixels=1)  # other kinds are not images
    with pytest.raises(BadOutput, match="pixels"):
        check_output(staged(good), ctype, max_pixels=32 * 24 - 1)
    with pytest.raises(BadOutput):
        check_output(staged(b"\0" * 12 + good[12:]), ctype, max_pixels=10_000)
    if fmt in ("PNG", "JPEG"):
        with pytest.raises(BadOutput, match="does not decode"):
            check_output(staged(good[: len(good) * 2 // 3]), ctype, max_pixels=10_000)


def test_check_output_refuses_a_png_decompression_bomb(staged) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadOutput) as caught:
        check_output(staged(corrupt_png(_image("PNG"), "bomb")), "image/png", max_pixels=8192 * 8192)
    assert caught.value.details["reason"] == "pixels"
