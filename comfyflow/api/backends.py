"""Backends: the pool as INTERNAL callers see it, and registering or removing backends at run time."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow.api.http import json_body
from comfyflow.core.pool import BackendPool, backend_id
from comfyflow.errors import ConfigError, Forbidden, NotFound, ValidationError
from comfyflow.models import Role

bp = Blueprint("backends", url_prefix="/api/v1")


class Registration(BaseModel):
    """``POST /api/v1/admin/backends``: a ComfyUI server to add (or change) at run time."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=500, description="Base URL, e.g. http://10.0.0.5:8188")
    capacity: int | None = Field(default=None, ge=1, le=64, description="Slots (default COMFYFLOW_BACKEND_SLOTS).")
    labels: list[str] | None = Field(default=None, max_length=32, description="Free-form, e.g. vram-24gb.")


def _internal(request: Request) -> BackendPool:
    if request.ctx.principal.role != Role.INTERNAL:
        raise Forbidden("Backends are visible to INTERNAL callers only.", details={"role": request.ctx.principal.role})
    return request.app.ctx.rt.pool


async def _listing(request: Request, pool: BackendPool) -> list[dict[str, Any]]:
    view = await pool.view(fresh=True)
    slots = request.app.ctx.rt.slots
    used = await asyncio.gather(*(slots.in_use(u) for u in view.backends))
    return [state.public(n) for state, n in zip(view.backends.values(), used, strict=True)]


async def _find(pool: BackendPool, ident: str) -> str:
    view = await pool.view(fresh=True)
    for url in view.backends:
        if ident in (url, backend_id(url)):
            return url
    raise NotFound(f"No backend {ident!r}; GET /api/v1/backends lists them with their ids.", details={"id": ident})


@bp.get("/backends")
async def list_backends(request: Request) -> HTTPResponse:
    """Every backend with its capacity, slots in use, labels, models, health and the latest probe."""
    return json({"backends": await _listing(request, _internal(request))})


@bp.get("/admin/backends")
async def admin_list(request: Request) -> HTTPResponse:
    return json({"backends": await _listing(request, _internal(request))})


@bp.get("/admin/backends/<ident:str>")
async def admin_get(request: Request, ident: str) -> HTTPResponse:
    pool = _internal(request)
    url = await _find(pool, ident)
    return json(next(b for b in await _listing(request, pool) if b["url"] == url))


@bp.post("/admin/backends")
async def admin_register(request: Request) -> HTTPResponse:
    """Add a backend (or change its capacity and labels, or enable a disabled one); probe it once at once.
    Every process routes to it within a fraction of a second once it is up."""
    pool = _internal(request)
    body = Registration.model_validate(json_body(request, max_bytes=64 * 1024))
    try:
        spec = await pool.register(body.url, capacity=body.capacity, labels=body.labels)
    except ConfigError as exc:
        raise ValidationError(exc.message, details=[{"field": "url/labels", "value": body.url}]) from None
    await pool.probe(spec.url)
    listing = await _listing(request, pool)
    return json(next(b for b in listing if b["url"] == spec.url), status=201)


@bp.delete("/admin/backends/<ident:str>")
async def admin_remove(request: Request, ident: str) -> HTTPResponse:
    """Take a backend out of the pool: prompts waiting in its queue move to other backends, running ones finish.
    A configured backend (COMFYFLOW_BACKENDS) is disabled rather than forgotten; POST enables it again."""
    pool = _internal(request)
    url = await _find(pool, ident)
    outcome = await pool.remove(url)
    return json({"id": backend_id(url), "url": url, "outcome": outcome})
