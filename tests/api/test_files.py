"""Uploads (type, size and decompression-bomb checks), img2img from an upload, and the model list."""

from __future__ import annotations

import io

import aiohttp
from PIL import Image

from tests.api.helpers import error_of, png, png_header_only, submit, tiny, wait_for


def form(data: bytes, *, name: str = "image", filename: str = "in.png", ctype: str = "image/png") -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field(name, data, filename=filename, content_type=ctype)
    return fd


async def test_upload_png_then_img2img(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    image = png(96, 64)
    async with http.post(f"{base}/api/v1/uploads", data=form(image)) as r:
        assert r.status == 201, await r.text()
        up = await r.json()
    assert up["content_type"] == "image/png" and (up["width"], up["height"]) == (96, 64)
    assert up["size"] == len(image) and len(up["upload_id"]) == 32
    # the image itself as the body works too (JPEG here)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 90, 200)).save(buf, format="JPEG")
    async with http.post(f"{base}/api/v1/uploads", data=buf.getvalue(), headers={"Content-Type": "image/jpeg"}) as r:
        assert r.status == 201 and (await r.json())["content_type"] == "image/jpeg"

    job = await submit(http, base, tiny(init_image=up["upload_id"], denoise=0.5))
    assert job["request"]["kind"] == "img2img"
    done = await wait_for(http, base, job["job_id"])
    assert done["status"] == "succeeded", done
    assert any(e["path"] == "/upload/image" for e in fake.log), "the input image went to ComfyUI"

    async with http.post(f"{base}/api/v1/jobs", json=tiny(init_image="a" * 32)) as r:
        err = await error_of(r, 422, "VALIDATION_ERROR")
        assert err["details"][0]["field"] == "init_image"


async def test_upload_refuses_what_is_not_an_image(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    url = f"{base}/api/v1/uploads"
    async with http.post(url, data=b"hello", headers={"Content-Type": "text/plain"}) as r:
        await error_of(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    async with http.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as r:
        await error_of(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    async with http.post(url, data=b"hello") as r:
        await error_of(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    async with http.post(url, data=form(b"just text", filename="a.txt", ctype="text/plain")) as r:
        assert (await error_of(r, 422, "VALIDATION_ERROR"))["details"][0]["field"] == "image"
    async with http.post(url, data=b"GIF89a-not-really", headers={"Content-Type": "image/png"}) as r:
        await error_of(r, 422, "VALIDATION_ERROR")
    async with http.post(url, data=form(png(), name="file")) as r:
        assert "'image'" in (await error_of(r, 422, "VALIDATION_ERROR"))["message"]
    async with http.post(url, data=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"}) as r:
        await error_of(r, 422, "VALIDATION_ERROR")
    async with http.post(url, data=png()[:40], headers={"Content-Type": "image/png"}) as r:
        await error_of(r, 422, "VALIDATION_ERROR")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    async with http.post(url, data=form(gif.getvalue(), filename="a.gif", ctype="image/gif")) as r:
        await error_of(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    async with http.post(url, data=b"", headers={"Content-Type": "image/png"}) as r:
        await error_of(r, 422, "VALIDATION_ERROR")


async def test_upload_refuses_decompression_bombs(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    url = f"{base}/api/v1/uploads"
    # over the configured pixel limit (4096 x 4096), and far over Pillow's own bomb limit: refused from the header
    for width, height in ((5000, 5000), (60000, 60000), (1, 2**31 - 1)):
        bomb = png_header_only(width, height)
        assert len(bomb) < 200
        async with http.post(url, data=form(bomb)) as r:
            err = await error_of(r, 422, "VALIDATION_ERROR")
            assert err["details"][0]["field"] == "image"
            assert "pixels" in err["message"] or "bomb" in err["message"], err


async def test_upload_size_limits(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, max_upload_bytes=64 * 1024, max_body_bytes=64 * 1024)
    url = f"{base}/api/v1/uploads"
    big = png(512, 512, (1, 2, 3))[:8] + b"\0" * (100 * 1024)  # over the limit, under the server's hard cap
    async with http.post(url, data=form(big)) as r:
        await error_of(r, 413, "PAYLOAD_TOO_LARGE")
    async with http.post(url, data=big, headers={"Content-Type": "image/png"}) as r:
        await error_of(r, 413, "PAYLOAD_TOO_LARGE")
    # over the hard cap: refused from Content-Length, before the body is read
    huge = b"\0" * (2 * 1024 * 1024)
    async with http.post(url, data=huge, headers={"Content-Type": "image/png"}) as r:
        await error_of(r, 413, "PAYLOAD_TOO_LARGE")
    async with http.post(url, data=form(png())) as r:
        assert r.status == 201


async def test_models_lists_what_the_backends_offer(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    async with http.get(f"{base}/api/v1/models") as r:
        assert r.status == 200
        body = await r.json()
    assert body["checkpoints"] == sorted(fake.checkpoints)
    assert "euler" in body["samplers"] and "karras" in body["schedulers"]
    assert body["backends"] == {"total": 1, "answering": 1}
    assert fake.url.split("//")[1] not in str(body), "no host is named"
    await fake.stop()
    async with http.get(f"{base}/api/v1/models") as r:
        assert r.status == 200, "a cached answer or a per-backend 'down', never an error"
