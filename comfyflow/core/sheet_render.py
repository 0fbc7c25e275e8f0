"""Draw a contact sheet with Pillow: labels, each finished item's image scaled into its cell, placeholders for the
rest. Plain CPU work: call it in a thread (``asyncio.to_thread``), never on the event loop."""

from __future__ import annotations

import io
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from comfyflow.core.sheet_layout import GAP, PAD, ROW_LABEL_W, TITLE_H, Sheet

BACKGROUND = (250, 250, 250)
INK = (20, 20, 20)
CELL_BACKGROUND = (255, 255, 255)
#: Placeholder fill of an unfinished item, by job state (its name is written on it).
PLACEHOLDER = {
    "queued": (226, 226, 226),
    "running": (198, 219, 242),
    "failed": (242, 200, 200),
    "canceled": (190, 190, 190),
    "expired": (210, 200, 180),
    "missing": (236, 236, 236),
    "no image": (236, 236, 236),
}


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def thumbnail(data: bytes, cell: int) -> Image.Image:
    """An image's bytes scaled down (never up) to fit a ``cell`` x ``cell`` square, as RGB."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (cell, cell))  # JPEG decodes at a smaller scale
        img.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, CELL_BACKGROUND)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return img.convert("RGB")


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, size: int) -> str:
    f = font(size)
    if draw.textlength(text, font=f) <= width:
        return text
    while text and draw.textlength(text + "…", font=f) > width:
        text = text[:-1]
    return text + "…"


def render(sheet: Sheet, cell: int, thumbs: dict[int, Image.Image], states: dict[int, str]) -> bytes:
    """The sheet as PNG bytes. ``thumbs`` maps item index -> its thumbnail (finished items), ``states`` item index
    -> the placeholder's state for the others."""
    geo = sheet.geometry(cell)
    img = Image.new("RGB", (geo["width"], geo["height"]), BACKGROUND)
    draw = ImageDraw.Draw(img)
    left, top, step = geo["left"], geo["top"], cell + GAP
    draw.text((PAD, PAD + TITLE_H // 2), _fit(draw, sheet.title, geo["width"] - 2 * PAD, 14), fill=INK,
              font=font(14), anchor="lm")  # fmt: skip
    for i, line in enumerate(sheet.corner):  # which field is on which axis
        draw.text((PAD, PAD + TITLE_H + 8 + 16 * i), _fit(draw, line, ROW_LABEL_W - 4, 12), fill=INK, font=font(12),
                  anchor="lm")  # fmt: skip
    label_size = 12 if cell >= 48 else 10
    for c, text in enumerate(sheet.col_labels):
        cx = left + c * step + cell // 2
        draw.text((cx, top - 10), _fit(draw, text, max(cell, 8), label_size), fill=INK, font=font(label_size),
                  anchor="ms")  # fmt: skip
    for r, text in enumerate(sheet.row_labels):
        cy = top + r * step + cell // 2
        draw.text((left - 6, cy), _fit(draw, text, ROW_LABEL_W - 10, label_size), fill=INK, font=font(label_size),
                  anchor="rm")  # fmt: skip
    for pos, index in enumerate(sheet.cells):
        x0, y0 = left + (pos % sheet.columns) * step, top + (pos // sheet.columns) * step
        if index is None:
            continue
        thumb = thumbs.get(index)
        if thumb is not None:
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=CELL_BACKGROUND)
            img.paste(thumb, (x0 + (cell - thumb.width) // 2, y0 + (cell - thumb.height) // 2))
            continue
        state = states.get(index, "missing")
        draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=PLACEHOLDER.get(state, PLACEHOLDER["missing"]))
        if cell >= 32:
            draw.text((x0 + cell // 2, y0 + cell // 2), _fit(draw, state, cell - 4, label_size), fill=(70, 70, 70),
                      font=font(label_size), anchor="mm")  # fmt: skip
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)  # fast: a sheet is redrawn as items finish
    return out.getvalue()
