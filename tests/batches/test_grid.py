"""The contact sheet of a batch (``GET /api/v1/batches/{id}/grid``), decoded with Pillow: its size, where its
labels are, that each finished cell is its item's image, placeholders, ETag, caps, and plain grids of item lists."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
from PIL import Image, ImageChops, ImageStat

from tests.batches.test_batch_api import HeaderPolicy

BASE = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 1}
BACKGROUND = (250, 250, 250)
PAD = 8  # the sheet's outer margin (comfyflow/core/sheet_layout.py)


class Callers(HeaderPolicy):
    """Callers named by X-User, without a daily quota."""

    async def daily_limit(self, principal: Any) -> tuple[int | None, str]:
        return None, "20250101"


async def make_batch(http: aiohttp.ClientSession, base: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    async with http.post(f"{base}/api/v1/batches", json=body, **kw) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


async def finished(http: aiohttp.ClientSession, base: str, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with http.get(f"{base}/api/v1/batches/{batch_id}?limit=500") as r:
            batch = await r.json()
        if batch["status"] not in ("queued", "running"):
            return dict(batch)
        assert asyncio.get_running_loop().time() < deadline, batch
        await asyncio.sleep(0.1)


async def grid(http: aiohttp.ClientSession, base: str, batch_id: str, query: str = "",
               headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, Image.Image | None]:  # fmt: skip
    async with http.get(f"{base}/api/v1/batches/{batch_id}/grid{query}", headers=headers) as r:
        data = await r.read()
    image = Image.open(io.BytesIO(data)).convert("RGB") if r.status == 200 else None
    if r.status == 200:
        assert r.content_type == "image/png"
    return r, image


def layout(r: aiohttp.ClientResponse) -> tuple[int, int, int, int, int, int]:
    left, top = (int(v) for v in r.headers["X-Grid-Origin"].split(","))
    cols, rows = int(r.headers["X-Grid-Columns"]), int(r.headers["X-Grid-Rows"])
    return left, top, int(r.headers["X-Grid-Cell"]), int(r.headers["X-Grid-Gap"]), cols, rows


def cell_box(r: aiohttp.ClientResponse, col: int, row: int) -> tuple[int, int, int, int]:
    left, top, cell, gap, *_ = layout(r)
    x0, y0 = left + col * (cell + gap), top + row * (cell + gap)
    return x0, y0, x0 + cell, y0 + cell


def ink_bbox(img: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """Bounding box (in sheet coordinates) of the dark pixels inside ``box``."""
    region = img.crop(box).convert("L").point(lambda v: 255 if v < 128 else 0)
    found = region.getbbox()
    return None if found is None else (box[0] + found[0], box[1] + found[1], box[0] + found[2], box[1] + found[3])


def check_labels(img: Image.Image, r: aiohttp.ClientResponse) -> None:
    """Each column's label sits above its column, centred on it; each row's label left of its row, centred on it."""
    left, top, _, gap, cols, rows = layout(r)
    for c in range(cols):
        x0, y0, x1, _ = cell_box(r, c, 0)
        ink = ink_bbox(img, (x0 - gap // 2, top - 30, x1 + gap // 2, top))
        assert ink is not None, f"no label over column {c}"
        assert abs((ink[0] + ink[2]) / 2 - (x0 + x1) / 2) <= 3, (c, ink, x0, x1)
    for row in range(rows):
        _, y0, _, y1 = cell_box(r, 0, row)
        ink = ink_bbox(img, (PAD, y0, left, y1))
        assert ink is not None, f"no label left of row {row}"
        assert abs((ink[1] + ink[3]) / 2 - (y0 + y1) / 2) <= 4 and ink[2] <= left, (row, ink, y0, y1)


def same_image(img: Image.Image, box: tuple[int, int, int, int], artifact: bytes) -> bool:
    """The cell holds the artifact scaled into it (centred; the test scales it independently)."""
    expected = Image.open(io.BytesIO(artifact)).convert("RGB")
    expected.thumbnail((box[2] - box[0], box[3] - box[1]))
    x = box[0] + (box[2] - box[0] - expected.width) // 2
    y = box[1] + (box[3] - box[1] - expected.height) // 2
    got = img.crop((x, y, x + expected.width, y + expected.height))
    diff = ImageStat.Stat(ImageChops.difference(got, expected)).mean
    return max(diff) < 3.0


async def artifact_of(http: aiohttp.ClientSession, item: dict[str, Any]) -> bytes:
    async with http.get(item["result"]["artifacts"][0]["url"]) as r:
        assert r.status == 200
        return await r.read()


async def test_a_finished_sweep_sheet_has_its_labels_and_each_items_image(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    seeds, cfgs, steps = [11, 22, 33], [5, 7], [1, 2]
    body = {"name": "fox", "base": BASE, "sweep": {"seed": seeds, "cfg_scale": cfgs, "steps": steps}}
    batch = await make_batch(http, base, body)
    assert batch["axes"] == {"seed": 3, "cfg_scale": 2, "steps": 2}
    done = await finished(http, base, batch["batch_id"])
    assert done["counts"]["succeeded"] == 12, done
    images: dict[tuple[int, float, int], bytes] = {}
    for item in done["items"]:
        async with http.get(f"{base}{item['links']['self']}") as r:
            req = (await r.json())["request"]
        images[(req["seed"], req["cfg_scale"], req["steps"])] = await artifact_of(http, item)
    assert len(set(images.values())) == 12  # every item looks different: a misplaced cell cannot pass
    for z_index, step in enumerate(steps):
        r, img = await grid(http, base, batch["batch_id"], f"?cell=32&z_index={z_index}")
        assert r.status == 200 and img is not None
        left, top, cell, gap, cols, rows = layout(r)
        assert (cols, rows, cell) == (3, 2, 32)  # x = seed, y = cfg_scale (the first two), z = steps
        assert img.size == (left + cols * (cell + gap) - gap + PAD, top + rows * (cell + gap) - gap + PAD)
        check_labels(img, r)
        for c, seed in enumerate(seeds):
            for row, cfg in enumerate(cfgs):
                assert same_image(img, cell_box(r, c, row), images[(seed, cfg, step)]), (seed, cfg, step)
    # other axes: x = cfg_scale, y = steps, seed held at its second value
    r, img = await grid(http, base, batch["batch_id"], "?x=cfg_scale&y=steps&z=seed&z_index=1&cell=40")
    assert r.status == 200 and img is not None and layout(r)[4:] == (2, 2)
    check_labels(img, r)
    for c, cfg in enumerate(cfgs):
        for row, step in enumerate(steps):
            assert same_image(img, cell_box(r, c, row), images[(22, cfg, step)])
    # the default cell size fits the sheet, scaling the 64-pixel images up never
    r, img = await grid(http, base, batch["batch_id"])
    assert r.status == 200 and int(r.headers["X-Grid-Cell"]) == 256
    assert same_image(img, cell_box(r, 0, 0), images[(11, 5, 1)])  # type: ignore[arg-type]


async def test_placeholders_and_an_etag_that_changes_when_an_item_finishes(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    batch = await make_batch(http, base, {"base": BASE, "sweep": {"seed": [1, 2], "cfg_scale": [5, 7]}})
    bid = batch["batch_id"]
    r, img = await grid(http, base, bid, "?cell=48")
    assert r.status == 200 and img is not None
    etag = r.headers["ETag"]
    queued = img.getpixel((cell_box(r, 0, 0)[0] + 2, cell_box(r, 0, 0)[1] + 2))
    assert all(img.getpixel((cell_box(r, c, w)[0] + 2, cell_box(r, c, w)[1] + 2)) == queued
               for c in range(2) for w in range(2))  # fmt: skip
    assert queued != BACKGROUND and ink_bbox(img, cell_box(r, 1, 1)) is not None  # a grey cell saying "queued"
    r2, _ = await grid(http, base, bid, "?cell=48", headers={"If-None-Match": etag})
    assert r2.status == 304 and r2.headers["ETag"] == etag
    async with http.get(f"{base}/api/v1/batches/{bid}?limit=4") as resp:
        second = (await resp.json())["items"][1]["job_id"]  # seed 1, cfg 7: column 0, row 1
    async with http.delete(f"{base}/api/v1/jobs/{second}") as resp:
        assert (await resp.json())["status"] == "canceled"
    r3, img3 = await grid(http, base, bid, "?cell=48", headers={"If-None-Match": etag})
    assert r3.status == 200 and r3.headers["ETag"] != etag and img3 is not None
    x0, y0, *_ = cell_box(r3, 0, 1)
    assert img3.getpixel((x0 + 2, y0 + 2)) not in (queued, BACKGROUND)  # the canceled item's own placeholder
    assert img3.getpixel((cell_box(r3, 0, 0)[0] + 2, cell_box(r3, 0, 0)[1] + 2)) == queued
    r4, _ = await grid(http, base, bid, "?cell=32", headers={"If-None-Match": r3.headers["ETag"]})
    assert r4.status == 200  # another cell size is another sheet


async def test_an_items_list_gets_a_plain_grid_in_item_order(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    items = [{**BASE, "seed": s} for s in (1, 2, 3, 4)] + [{**BASE, "model": "nope.safetensors"}]
    batch = await make_batch(http, base, {"items": items})
    done = await finished(http, base, batch["batch_id"])
    assert done["counts"] == {**done["counts"], "succeeded": 4, "failed": 1}
    r, img = await grid(http, base, batch["batch_id"], "?cell=32")
    assert r.status == 200 and img is not None and layout(r)[4:] == (3, 2)  # ceil(sqrt(5)) columns
    check_labels(img, r)
    for index, item in enumerate(done["items"][:4]):
        assert same_image(img, cell_box(r, index % 3, index // 3), await artifact_of(http, item)), index
    failed = cell_box(r, 1, 1)
    assert img.getpixel((failed[0] + 2, failed[1] + 2)) not in (BACKGROUND, (255, 255, 255))
    assert img.getpixel((cell_box(r, 2, 1)[0] + 2, cell_box(r, 2, 1)[1] + 2)) == BACKGROUND  # no sixth item
    r, img = await grid(http, base, batch["batch_id"], "?cell=32&offset=2&limit=2&columns=2")
    assert r.status == 200 and layout(r)[4:] == (2, 1)
    assert same_image(img, cell_box(r, 0, 0), await artifact_of(http, done["items"][2]))  # type: ignore[arg-type]


async def test_bad_grid_requests_get_a_422_that_says_how_to_ask_for_less(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, policy=Callers())
    alice = {"X-User": "alice"}
    big = await make_batch(http, base, {"base": BASE, "sweep": {"seed": list(range(50)), "cfg_scale": [5, 6]}},
                           headers=alice)  # fmt: skip
    bid = big["batch_id"]

    async def error(query: str, who: dict[str, str] = alice) -> tuple[int, dict[str, Any]]:
        async with http.get(f"{base}/api/v1/batches/{bid}/grid{query}", headers=who) as r:
            return r.status, (await r.json())["error"]

    status, err = await error("?cell=512")
    assert status == 422 and err["details"][0]["field"] == "cell" and "cell=" in err["message"]
    fits = err["details"][0]["limit"]
    async with http.get(f"{base}/api/v1/batches/{bid}/grid?cell={fits}", headers=alice) as r:
        assert r.status == 200  # the size the message suggests is accepted
    async with http.get(f"{base}/api/v1/batches/{bid}/grid?cell={fits + 1}", headers=alice) as r:
        assert r.status == 422
    for query, field in (("?x=nope", "x"), ("?y=seed", "y"), ("?z_index=1", "z_index"), ("?cell=9", "cell"),
                         ("?cells=64", "cells"), ("?fix=seed", "fix"), ("?x_offset=50", "x_offset")):  # fmt: skip
        status, err = await error(query)
        assert status == 422 and err["details"][0]["field"] == field, (query, err)
    status, err = await error("?x=nope")
    assert "seed" in err["message"] and "cfg_scale" in err["message"]  # the choices are named
    status, _ = await error("", {"X-User": "bob"})
    assert status == 404  # another caller's batch
    sweep = {"seed": list(range(40)), "cfg_scale": list(range(1, 27))}  # 1,040 cells > 1,024
    many = await make_batch(http, base, {"base": BASE, "sweep": sweep}, headers={"X-User": "carol"})
    async with http.get(f"{base}/api/v1/batches/{many['batch_id']}/grid", headers={"X-User": "carol"}) as r:
        err = (await r.json())["error"]
        assert r.status == 422 and err["details"][0]["field"] == "cells" and "x_limit" in err["message"]
    async with http.get(f"{base}/api/v1/batches/{many['batch_id']}/grid?y_limit=10",
                        headers={"X-User": "carol"}) as r:  # fmt: skip
        assert r.status == 200 and r.headers["X-Grid-Rows"] == "10" and r.headers["X-Grid-Columns"] == "40"
