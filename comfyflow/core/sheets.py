"""Contact sheets of batches: which items a sheet shows, its ETag, and the PNG (drawn in a thread, cached).

The ETag is a digest of the sheet's parameters and of each cell's (state, attempt, image): it changes when an item
starts, finishes or is retried, and not otherwise, so a client polling with ``If-None-Match`` costs one read of the
cells' jobs and no drawing. Rendered sheets and thumbnails are kept in small in-process caches.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from comfyflow.core.batches import Batch, BatchStore
from comfyflow.core.sheet_layout import Sheet, cell_size, list_sheet, sweep_sheet
from comfyflow.core.sheet_render import render, thumbnail
from comfyflow.models import Job, JobState

#: Most bytes of one artifact read for a thumbnail (a bigger one gets a placeholder).
MAX_SOURCE_BYTES = 64 * 1024 * 1024
THUMB_PIXEL_BUDGET = 24_000_000  # ~72 MB of RGB thumbnails per process
SHEET_CACHE = 8
ID_CACHE = 32


@dataclass(frozen=True)
class SheetQuery:
    """What a client asked for (``GET /api/v1/batches/{id}/grid`` query arguments)."""

    x: str | None = None
    y: str | None = None
    z: str | None = None
    z_index: int = 0
    fix: dict[str, int] = field(default_factory=dict)
    window: tuple[int, int | None, int, int | None] = (0, None, 0, None)
    offset: int = 0
    limit: int | None = None
    columns: int | None = None
    cell: int | None = None

    def key(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, default=list)


@dataclass(frozen=True)
class Plan:
    sheet: Sheet
    cell: int
    etag: str
    jobs: dict[int, Job | None]


def first_image(job: Job) -> str | None:
    if job.result is None:
        return None
    return next((a.key for a in job.result.artifacts if a.content_type.startswith("image/")), None)


def sheet_for(batch: Batch, q: SheetQuery) -> Sheet:
    name = batch.name or f"batch {batch.batch_id[:8]}"
    if batch.sweep:
        return sweep_sheet(batch.sweep, x=q.x, y=q.y, z=q.z, z_index=q.z_index, fix=q.fix, window=q.window, name=name)
    return list_sheet(batch.total, offset=q.offset, limit=q.limit, columns=q.columns, name=name)


class ContactSheets:
    """Plans and draws contact sheets. Open once per API process (it holds the caches)."""

    def __init__(self, batches: BatchStore, storage: Any, *, renders_at_once: int = 2) -> None:
        self.batches = batches
        self.storage = storage
        self._ids: OrderedDict[str, list[str]] = OrderedDict()
        self._sheets: OrderedDict[str, bytes] = OrderedDict()
        self._thumbs: OrderedDict[tuple[str, int], Image.Image] = OrderedDict()
        self._thumb_pixels = 0
        self._renders = asyncio.Semaphore(renders_at_once)

    async def _item_ids(self, batch: Batch) -> list[str]:
        ids = self._ids.get(batch.batch_id)
        if ids is None:  # a batch's item list never changes once created
            ids = await self.batches.item_ids(batch.batch_id, 0, batch.total)
            self._ids[batch.batch_id] = ids
            while len(self._ids) > ID_CACHE:
                self._ids.popitem(last=False)
        self._ids.move_to_end(batch.batch_id)
        return ids

    async def plan(self, batch: Batch, q: SheetQuery) -> Plan:
        """The sheet, its cell size and ETag, and the jobs of its cells.

        Raises:
            ValidationError: bad axes or indexes, or a sheet over the caps (the message says how to ask for less).
        """
        sheet = sheet_for(batch, q)
        cell = cell_size(sheet, q.cell)
        ids = await self._item_ids(batch)
        indexes = [i for i in sheet.cells if i is not None and i < len(ids)]
        jobs = dict(zip(indexes, await self.batches.jobs([ids[i] for i in indexes]), strict=True))
        digest = hashlib.sha256(f"{batch.batch_id}|{q.key()}|{cell}".encode())
        for index in indexes:
            job = jobs[index]
            state = (job.status.value, job.attempt, first_image(job)) if job is not None else None
            digest.update(f"|{index}:{state}".encode())
        return Plan(sheet, cell, f'"{digest.hexdigest()[:40]}"', jobs)

    async def png(self, plan: Plan) -> bytes:
        """The sheet's PNG: from the cache when its ETag was drawn already, else drawn in a thread."""
        cached = self._sheets.get(plan.etag)
        if cached is not None:
            self._sheets.move_to_end(plan.etag)
            return cached
        async with self._renders:
            thumbs, states = await self._cells(plan)
            data = await asyncio.to_thread(render, plan.sheet, plan.cell, thumbs, states)
        self._sheets[plan.etag] = data
        while len(self._sheets) > SHEET_CACHE:
            self._sheets.popitem(last=False)
        return data

    async def _cells(self, plan: Plan) -> tuple[dict[int, Image.Image], dict[int, str]]:
        thumbs: dict[int, Image.Image] = {}
        states: dict[int, str] = {}
        wanted: dict[int, str] = {}
        for index, job in plan.jobs.items():
            if job is None:
                states[index] = "missing"
            elif job.status != JobState.SUCCEEDED:
                states[index] = job.status.value
            elif (key := first_image(job)) is None:
                states[index] = "no image"
            else:
                wanted[index] = key
        fetch = asyncio.Semaphore(8)

        async def one(index: int, key: str) -> None:
            thumb = self._thumbs.get((key, plan.cell))
            if thumb is None:
                async with fetch:
                    thumb = await self._thumbnail(key, plan.cell)
            if thumb is None:
                states[index] = "no image"
            else:
                thumbs[index] = thumb

        await asyncio.gather(*(one(i, k) for i, k in wanted.items()))
        return thumbs, states

    async def _thumbnail(self, key: str, cell: int) -> Image.Image | None:
        info = await self.storage.info(key)
        if info is None or info.size > MAX_SOURCE_BYTES:
            return None
        data = await self.storage.get(key)
        try:
            thumb = await asyncio.to_thread(thumbnail, data, cell)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        self._thumbs[(key, cell)] = thumb
        self._thumb_pixels += thumb.width * thumb.height
        while self._thumb_pixels > THUMB_PIXEL_BUDGET and self._thumbs:
            _, old = self._thumbs.popitem(last=False)
            self._thumb_pixels -= old.width * old.height
        return thumb
