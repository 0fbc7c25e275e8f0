"""Contact sheets without a server: which item each cell shows (checked against the order batches expand
sweeps in), the caps, and that drawing happens off the event loop."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from comfyflow.core import sheets
from comfyflow.core.batches import BatchRequest, expand
from comfyflow.core.sheet_layout import MAX_CELLS, MAX_SHEET_PIXELS, cell_size, list_sheet, sweep_sheet
from comfyflow.errors import ValidationError

SWEEP = {"seed": [1, 2, 3], "cfg_scale": [5.0, 7.0], "steps": [4, 8], "sampler": ["euler", "dpmpp_2m"]}


def items() -> list[Any]:
    spec = BatchRequest(base={"prompt": "fox"}, sweep=SWEEP)
    return expand(spec, batch_id="0" * 32, max_items=100)


AXES = [(None, None, None), ("steps", "seed", "sampler"), ("sampler", "cfg_scale", "seed")]


@pytest.mark.parametrize(("x", "y", "z"), AXES)
def test_every_cell_shows_the_item_with_its_row_and_column_values(x: Any, y: Any, z: Any) -> None:
    reqs = items()
    for z_index in range(2):
        for fixed in range(2):
            xn, yn = x or "seed", y or "cfg_scale"
            zn = z or "steps"
            other = next(n for n in SWEEP if n not in (xn, yn, zn))
            sheet = sweep_sheet(SWEEP, x=x, y=y, z=z, z_index=z_index, fix={other: fixed})
            assert (sheet.columns, sheet.rows) == (len(SWEEP[xn]), len(SWEEP[yn]))
            for pos, index in enumerate(sheet.cells):
                req = reqs[index]  # type: ignore[index]
                col, row = pos % sheet.columns, pos // sheet.columns
                assert getattr(req, xn) == SWEEP[xn][col] and getattr(req, yn) == SWEEP[yn][row]
                assert getattr(req, zn) == SWEEP[zn][z_index] and getattr(req, other) == SWEEP[other][fixed]
            assert sheet.col_labels == [str(v) for v in SWEEP[xn]]
            assert f"{other} = {SWEEP[other][fixed]}" in sheet.title


def test_windows_and_plain_grids() -> None:
    sheet = sweep_sheet(SWEEP, window=(1, 2, 1, None))
    assert sheet.col_labels == ["2", "3"] and sheet.row_labels == ["7.0"]
    grid = list_sheet(10, offset=3, limit=5)
    assert (grid.columns, grid.rows) == (3, 2) and grid.cells == [3, 4, 5, 6, 7, None]
    assert grid.row_labels == ["3", "6"]


def test_the_caps_say_how_to_ask_for_less() -> None:
    wide = sweep_sheet({"seed": list(range(200)), "cfg_scale": list(range(6))})
    with pytest.raises(ValidationError) as exc:
        cell_size(wide, None)
    assert exc.value.details[0]["field"] == "cells" and exc.value.details[0]["limit"] == MAX_CELLS
    ok = sweep_sheet({"seed": list(range(200)), "cfg_scale": list(range(6))}, window=(0, 100, 0, None))
    assert cell_size(ok, None) >= 16
    with pytest.raises(ValidationError) as exc:
        cell_size(ok, 512)
    fits = exc.value.details[0]["limit"]
    pixels = [ok.geometry(edge)["width"] * ok.geometry(edge)["height"] for edge in (fits, fits + 1)]
    assert pixels[0] <= MAX_SHEET_PIXELS < pixels[1]  # the largest cell that fits
    for bad in ({"x": "nope"}, {"z_index": 2}, {"fix": {"seed": 0}}, {"fix": {"steps": 9}}):
        with pytest.raises(ValidationError):
            sweep_sheet(SWEEP, **bad)


async def test_sheets_are_drawn_in_a_thread_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn_in: list[int] = []

    def fake_render(*args: Any) -> bytes:
        drawn_in.append(threading.get_ident())
        return b"png"

    monkeypatch.setattr(sheets, "render", fake_render)
    contact = sheets.ContactSheets(SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
    plan = sheets.Plan(list_sheet(2), 32, '"e1"', {0: None, 1: None})
    assert await contact.png(plan) == b"png" and await contact.png(plan) == b"png"
    assert len(drawn_in) == 1 and drawn_in[0] != threading.get_ident()  # once, and not on the loop's thread
    assert asyncio.get_running_loop().is_running()
