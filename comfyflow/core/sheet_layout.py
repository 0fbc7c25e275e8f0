"""Which batch item goes in which cell of a contact sheet, and the sheet's size in pixels.

A sweep batch's items are the cartesian product of its swept values in the order they were sent (the last field
varies fastest), so an item's index gives its value of every swept field. A sheet puts one swept field along x
and one along y; a third (``z``) picks one sheet per value; any other swept field (a facet) is held at one value
(``fix=name:index``), and the title says which. An items-list batch (no sweep) is a plain grid in item order.
Nothing here reads Redis or pixels: it is the arithmetic, and the caps with their 422s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from comfyflow.errors import ValidationError

#: Caps of one sheet: cells, cell edge, and pixels of the whole sheet.
MAX_CELLS = 1024
MIN_CELL, MAX_CELL = 16, 512
MAX_SHEET_PIXELS = 16_000_000
#: Pixels an automatically sized sheet aims at (the cell edge shrinks as the cells grow in number).
AUTO_SHEET_PIXELS = 4_000_000
AUTO_CELL_MAX = 256

# Geometry (pixels); the tests read it back to find labels and cells.
PAD, GAP, TITLE_H, LABEL_H, ROW_LABEL_W = 8, 4, 22, 34, 150


@dataclass(frozen=True)
class Axis:
    name: str
    values: list[Any]
    offset: int = 0


@dataclass(frozen=True)
class Sheet:
    """One contact sheet: ``cells`` holds the item index of each cell, row by row (None: no item there)."""

    columns: int
    rows: int
    cells: list[int | None]
    col_labels: list[str]
    row_labels: list[str]
    corner: list[str]
    title: str
    facets: dict[str, Any] = field(default_factory=dict)

    def geometry(self, cell: int) -> dict[str, int]:
        """Where the grid starts and how big the sheet is, for a cell edge of ``cell`` pixels."""
        left = PAD + ROW_LABEL_W
        top = PAD + TITLE_H + LABEL_H
        width = left + self.columns * (cell + GAP) - GAP + PAD
        height = top + self.rows * (cell + GAP) - GAP + PAD
        return {"left": left, "top": top, "width": width, "height": height, "cell": cell, "gap": GAP}


def label(value: Any) -> str:
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


def _window(axis: Axis, offset: int, limit: int | None, which: str) -> Axis:
    if offset >= len(axis.values):
        raise ValidationError(
            f"{which}_offset={offset}, but {axis.name} has {len(axis.values)} values; use 0..{len(axis.values) - 1}.",
            details=[{"field": f"{which}_offset", "value": offset, "limit": len(axis.values) - 1}],
        )
    end = len(axis.values) if limit is None else offset + limit
    return Axis(axis.name, axis.values[offset:end], offset)


def _pick(sweep: dict[str, list[Any]], name: str | None, which: str, taken: set[str]) -> str | None:
    if name is None:
        return next((n for n in sweep if n not in taken), None)
    if name not in sweep or name in taken:
        choices = ", ".join(n for n in sweep if n not in taken) or "none left"
        raise ValidationError(
            f"{which}={name!r} is not a swept field of this batch (or is already on another axis); "
            f"choose one of: {choices}.",
            details=[{"field": which, "value": name, "choices": [n for n in sweep if n not in taken]}],
        )
    return name


def _index_of(sweep: dict[str, list[Any]], name: str, raw: Any, field_name: str) -> int:
    size = len(sweep[name])
    if not isinstance(raw, int) or not 0 <= raw < size:
        raise ValidationError(
            f"{field_name}={raw!r}: {name} has {size} values; give an index 0..{size - 1}.",
            details=[{"field": field_name, "value": raw, "limit": size - 1}],
        )
    return raw


def sweep_sheet(
    sweep: dict[str, list[Any]],
    *,
    x: str | None = None,
    y: str | None = None,
    z: str | None = None,
    z_index: int = 0,
    fix: dict[str, int] | None = None,
    window: tuple[int, int | None, int, int | None] = (0, None, 0, None),
    name: str = "",
) -> Sheet:
    """The sheet of a sweep. ``window`` is (x_offset, x_limit, y_offset, y_limit).

    Raises:
        ValidationError: an axis that is not a swept field, an index out of range, a fixed field on an axis.
    """
    names = list(sweep)
    taken: set[str] = set()
    xn = _pick(sweep, x, "x", taken)
    taken.add(xn or "")
    yn = _pick(sweep, y, "y", taken)
    taken.add(yn or "")
    zn = _pick(sweep, z, "z", taken)
    fixed: dict[str, int] = {}
    if zn is not None:
        fixed[zn] = _index_of(sweep, zn, z_index, "z_index")
    elif z_index:
        raise ValidationError(
            f"z_index={z_index}, but this sweep has no third field for z; leave z_index out.",
            details=[{"field": "z_index", "value": z_index, "limit": 0}],
        )
    for fname, index in (fix or {}).items():
        if fname not in sweep or fname in (xn, yn, zn):
            raise ValidationError(
                f"fix={fname}:{index}: {fname!r} is not a swept field off the x, y and z axes; fix one of: "
                f"{', '.join(n for n in names if n not in (xn, yn, zn)) or 'none'}.",
                details=[{"field": "fix", "value": fname}],
            )
        fixed[fname] = _index_of(sweep, fname, index, f"fix.{fname}")
    for other in names:  # facets not on an axis and not chosen: their first value
        if other not in (xn, yn) and other not in fixed:
            fixed[other] = 0
    strides: dict[str, int] = {}
    stride = 1
    for n in reversed(names):
        strides[n] = stride
        stride *= len(sweep[n])
    base = sum(strides[n] * i for n, i in fixed.items())
    x_axis = _window(Axis(xn, sweep[xn]), window[0], window[1], "x") if xn else Axis("", [None])
    y_axis = _window(Axis(yn, sweep[yn]), window[2], window[3], "y") if yn else Axis("", [None])
    cells: list[int | None] = []
    for r in range(len(y_axis.values)):
        for c in range(len(x_axis.values)):
            index = base
            if xn:
                index += strides[xn] * (x_axis.offset + c)
            if yn:
                index += strides[yn] * (y_axis.offset + r)
            cells.append(index)
    facets = {n: sweep[n][i] for n, i in fixed.items()}
    parts = [f"{n} = {label(v)}" for n, v in facets.items()]
    if zn is not None:
        parts[0] += f"  (z {fixed[zn] + 1}/{len(sweep[zn])})"
    title = "  ·  ".join([name, *parts] if name else parts) or name
    return Sheet(
        columns=len(x_axis.values),
        rows=len(y_axis.values),
        cells=cells,
        col_labels=[label(v) for v in x_axis.values] if xn else [""],
        row_labels=[label(v) for v in y_axis.values] if yn else [""],
        corner=[f"x: {xn}" if xn else "", f"y: {yn}" if yn else ""],
        title=title,
        facets=facets,
    )


def list_sheet(total: int, *, offset: int = 0, limit: int | None = None, columns: int | None = None,
               name: str = "") -> Sheet:  # fmt: skip
    """A plain grid of an items-list batch, in item order, labelled with item numbers."""
    if total and offset >= total:
        raise ValidationError(
            f"offset={offset}, but the batch has {total} items; use 0..{total - 1}.",
            details=[{"field": "offset", "value": offset, "limit": total - 1}],
        )
    count = max(0, min(total - offset, limit if limit is not None else total))
    cols = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    cells: list[int | None] = [offset + i if i < count else None for i in range(rows * cols)]
    return Sheet(
        columns=cols,
        rows=rows,
        cells=cells,
        col_labels=[str(c) for c in range(cols)],
        row_labels=[str(offset + r * cols) for r in range(rows)],
        corner=["item =", "row + column"],
        title="  ·  ".join(p for p in (name, f"items {offset}..{offset + count - 1} of {total}") if p),
    )


def cell_size(sheet: Sheet, asked: int | None) -> int:
    """The cell edge in pixels: ``asked``, or one that keeps the sheet near AUTO_SHEET_PIXELS.

    Raises:
        ValidationError: too many cells, or a sheet over MAX_SHEET_PIXELS; the message says how to ask for less.
    """
    n = sheet.columns * sheet.rows
    if n > MAX_CELLS:
        raise ValidationError(
            f"This sheet would have {sheet.columns} x {sheet.rows} = {n} cells; at most {MAX_CELLS}. Ask for less: "
            "a window of the axes (x_offset, x_limit, y_offset, y_limit; offset and limit for an items list), "
            "or put a field with fewer values on an axis (x=, y=, z=).",
            details=[{"field": "cells", "value": n, "limit": MAX_CELLS, "columns": sheet.columns, "rows": sheet.rows}],
        )
    if asked is None:
        auto = int(math.sqrt(AUTO_SHEET_PIXELS / n))
        return max(MIN_CELL, min(AUTO_CELL_MAX, auto))
    geo = sheet.geometry(asked)
    if geo["width"] * geo["height"] > MAX_SHEET_PIXELS:
        fits = MIN_CELL
        for edge in range(asked, MIN_CELL - 1, -1):
            g = sheet.geometry(edge)
            if g["width"] * g["height"] <= MAX_SHEET_PIXELS:
                fits = edge
                break
        raise ValidationError(
            f"cell={asked} makes a {geo['width']} x {geo['height']} sheet, over {MAX_SHEET_PIXELS} pixels. "
            f"Ask for less: cell={fits} or smaller, or fewer cells (x_limit, y_limit, limit).",
            details=[{"field": "cell", "value": asked, "limit": fits, "max_pixels": MAX_SHEET_PIXELS}],
        )
    return asked
