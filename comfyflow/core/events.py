"""Per-job event streams: status, progress, artifact, done. SSE and WebSocket read the same stream."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from comfyflow.core.keys import Keys
from comfyflow.models import JobEvent


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventLog:
    """Reads a job's events; writes happen inside the state scripts so they are atomic with transitions."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def read(
        self, job_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 100
    ) -> list[JobEvent]:
        """Events after ``after`` (a stream id, e.g. a client's Last-Event-ID), waiting up to ``block_ms``."""
        res: Any = await self.redis.xread({self.keys.events(job_id): after or "0-0"}, count=count, block=block_ms)
        out: list[JobEvent] = []
        for _stream, entries in res or []:
            for msg_id, fields in entries:
                f = {_s(k): _s(v) for k, v in fields.items()}
                out.append(JobEvent(id=_s(msg_id), type=f["type"], data=json.loads(f.get("data") or "{}")))  # type: ignore[arg-type]
        return out

    async def history(self, job_id: str) -> list[JobEvent]:
        events: list[JobEvent] = []
        after = "0-0"
        while batch := await self.read(job_id, after, count=500):
            events += batch
            after = batch[-1].id
        return events
