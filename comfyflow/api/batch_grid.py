"""``GET /api/v1/batches/{id}/grid``: the batch's contact sheet as a PNG (see comfyflow/core/sheets.py)."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from comfyflow.api.batches import own_batch
from comfyflow.api.http import query_int
from comfyflow.core.sheet_layout import MAX_CELL, MIN_CELL
from comfyflow.core.sheets import ContactSheets, SheetQuery
from comfyflow.errors import ValidationError

bp = Blueprint("batch_grid", url_prefix="/api/v1")
INTS = ("z_index", "x_offset", "x_limit", "y_offset", "y_limit", "offset", "limit", "columns", "cell")
ACCEPTED = ("x", "y", "z", "fix", *INTS)
BIG = 1_000_000


def _fix(raw: str | None) -> dict[str, int]:
    """``fix=sampler:1,steps:0`` -> {"sampler": 1, "steps": 0}."""
    out: dict[str, int] = {}
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        name, sep, index = part.partition(":")
        if not sep or not index.strip().isdigit():
            raise ValidationError(
                f"fix={raw!r}: give name:index pairs separated by commas, e.g. fix=sampler:1,steps:0.",
                details=[{"field": "fix", "value": raw}],
            )
        out[name.strip()] = int(index)
    return out


def parse_query(request: Request) -> SheetQuery:
    unknown = sorted(set(request.args) - set(ACCEPTED))
    if unknown:
        raise ValidationError(
            f"Unknown query argument {unknown[0]!r}; the grid takes {', '.join(ACCEPTED)}.",
            details=[{"field": name, "message": "unknown argument"} for name in unknown],
        )
    ints: dict[str, Any] = {}
    for name in INTS:
        if name in request.args:
            lo = MIN_CELL if name == "cell" else 1 if name in ("x_limit", "y_limit", "limit", "columns") else 0
            hi = MAX_CELL if name == "cell" else BIG
            ints[name] = query_int(request, name, 0, lo=lo, hi=hi)
    names = {}
    for axis in ("x", "y", "z"):
        value = request.args.get(axis)
        if value is not None and not 1 <= len(value) <= 100:
            raise ValidationError(f"{axis} must name a swept field.", details=[{"field": axis, "value": value[:100]}])
        names[axis] = value
    return SheetQuery(
        **names,
        z_index=ints.get("z_index", 0),
        fix=_fix(request.args.get("fix")),
        window=(ints.get("x_offset", 0), ints.get("x_limit"), ints.get("y_offset", 0), ints.get("y_limit")),
        offset=ints.get("offset", 0),
        limit=ints.get("limit"),
        columns=ints.get("columns"),
        cell=ints.get("cell"),
    )


@bp.get("/batches/<batch_id:str>/grid")
async def batch_grid(request: Request, batch_id: str) -> HTTPResponse:
    """The contact sheet: one swept field along x, one along y (``x=``, ``y=``; by default the first two), a third
    as one sheet per value (``z=``, ``z_index=``), others held at a value (``fix=name:index``); finished items'
    first images, placeholders for the rest. Items-list batches: a plain grid in item order (``offset``,
    ``limit``, ``columns``). ``cell`` sets the cell edge in pixels. ETag + If-None-Match: 304 until an item changes.
    """
    batch = await own_batch(request, batch_id)
    sheets: ContactSheets = request.app.ctx.sheets
    plan = await sheets.plan(batch, parse_query(request))
    geo = plan.sheet.geometry(plan.cell)
    headers = {
        "ETag": plan.etag,
        "Cache-Control": "private, no-cache",
        "X-Grid-Columns": str(plan.sheet.columns),
        "X-Grid-Rows": str(plan.sheet.rows),
        "X-Grid-Cell": str(plan.cell),
        "X-Grid-Gap": str(geo["gap"]),
        "X-Grid-Origin": f"{geo['left']},{geo['top']}",
    }
    if plan.etag in [t.strip() for t in (request.headers.get("if-none-match") or "").split(",")]:
        return HTTPResponse(status=304, headers=headers)
    data = await sheets.png(plan)
    headers["Content-Disposition"] = f'inline; filename="batch-{batch.batch_id}-grid.png"'
    return HTTPResponse(data, status=200, headers=headers, content_type="image/png")
