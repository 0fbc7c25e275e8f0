"""Batches over the API (``/api/v1/batches``), as methods the clients inherit. Example::

async with AsyncClient(url, api_key=key) as client:
    batch = await client.submit_batch({"base": {"prompt": "a fox"}, "sweep": {"seed": [1, 2, 3]}})
    batch = await client.wait_batch(batch.batch_id, timeout=600)
    async for item in client.batch_items(batch.batch_id):
        print(item.job_id, item.status, item.result)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from comfyflow.client.errors import ClientError
from comfyflow.models import ErrorInfo, JobResult

#: Batch states in which items may still change.
ACTIVE = ("queued", "running")


class BatchItem(BaseModel):
    """One item of a batch, as ``GET /api/v1/batches/{id}`` lists it."""

    model_config = ConfigDict(extra="ignore")

    index: int
    job_id: str
    status: str
    attempt: int = 1
    progress: float = 0.0
    result: JobResult | None = None
    error: ErrorInfo | None = None
    links: dict[str, str] = Field(default_factory=dict)


class BatchInfo(BaseModel):
    """A batch: its state, counts of items by job state, progress, and (when asked for) a page of items."""

    model_config = ConfigDict(extra="ignore")

    batch_id: str
    name: str | None = None
    status: str = Field(description="queued, running, succeeded, failed (some items failed) or canceled.")
    total: int
    counts: dict[str, int] = Field(default_factory=dict)
    progress: float = 0.0
    flow_run_id: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    items: list[BatchItem] = Field(default_factory=list)
    next_cursor: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE


class BatchTimeout(ClientError, TimeoutError):
    """Raised by ``wait_batch`` when the batch is not finished within the timeout; its items keep running."""

    code = "BATCH_TIMEOUT"

    def __init__(self, batch_id: str, timeout: float) -> None:
        super().__init__(
            f"Batch {batch_id} did not finish within {timeout:g}s; its items keep running. Wait again or cancel it.",
            details={"batch_id": batch_id, "timeout": timeout},
        )
        self.batch_id = batch_id


class BatchMethods:
    """``/api/v1/batches`` for a client that has ``_call`` (``AsyncClient``)."""

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:  # provided by AsyncClient
        raise NotImplementedError

    async def submit_batch(self, batch: Mapping[str, Any], /, *, idempotency_key: str | None = None) -> BatchInfo:
        """Queue every item of a batch at once (``POST /api/v1/batches``): ``{"items": [request, ...]}`` or
        ``{"base": request, "sweep": {"seed": [...], ...}}``, plus optional ``name``, ``priority``, ``labels``.
        With an ``idempotency_key``, sending the same batch again returns the same batch."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return BatchInfo.model_validate(await self._call("POST", "/api/v1/batches", json=dict(batch), headers=headers))

    async def get_batch(
        self, batch_id: str, *, limit: int = 0, cursor: str | None = None, status: str | None = None
    ) -> BatchInfo:
        """The batch now, with a page of up to ``limit`` items (after ``cursor``, only ``status`` ones if given)."""
        params = {"limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        if status:
            params["status"] = status
        return BatchInfo.model_validate(await self._call("GET", f"/api/v1/batches/{batch_id}", params=params))

    async def batch_items(
        self, batch_id: str, *, status: str | None = None, page_size: int = 200
    ) -> AsyncIterator[BatchItem]:
        """Every item of the batch in order (or only those in ``status``), following the cursor."""
        cursor: str | None = None
        while True:
            page = await self.get_batch(batch_id, limit=page_size, cursor=cursor, status=status)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Cancel the items not finished yet (``DELETE /api/v1/batches/{id}``)."""
        return BatchInfo.model_validate(await self._call("DELETE", f"/api/v1/batches/{batch_id}"))

    async def wait_batch(self, batch_id: str, *, timeout: float | None = None, every: float = 2.0) -> BatchInfo:
        """Poll the batch every ``every`` seconds until no item is queued or running; raises BatchTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = await self.get_batch(batch_id)
            if batch.finished:
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                raise BatchTimeout(batch_id, timeout or 0)
            await asyncio.sleep(every if deadline is None else max(0.0, min(every, deadline - time.monotonic())))
