"""Turning job events into webhook deliveries.

Each job with a webhook is watched while it is live: its event stream (the same one SSE reads) is read from a
cursor kept in Redis, and the events that notify are turned into deliveries in one atomic step with the cursor
move. Several watchers (one per worker process) may run: the cursor is compared-and-set, so one of them wins.

Events: ``job.started`` (each attempt that starts), ``job.progress`` at the 25/50/75 % milestones (each at
most once per round of attempts), and ``job.succeeded`` / ``job.failed`` / ``job.canceled``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog

from comfyflow.core.runtime import Runtime
from comfyflow.core.visibility import redact_job
from comfyflow.core.webhooks.outbox import NewDelivery, Outbox

log = structlog.get_logger("comfyflow.webhooks")

MILESTONES = (25, 50, 75)
FINAL_STATES = ("succeeded", "failed", "canceled")
NAMESPACE = uuid.UUID("0b7e3c38-3f59-4d53-9a43-7e0c1c1f5a4e")
WATCH_BATCH = 500


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def delivery_id(job_id: str, event_id: str, event: str) -> str:
    """Deterministic, so converting the same event twice names the same delivery (``webhook-id``)."""
    return "msg_" + uuid.uuid5(NAMESPACE, f"{job_id}:{event_id}:{event}").hex


def _when(event_id: str) -> str:
    ms = int(event_id.split("-")[0])
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def payload(event: str, event_id: str, data: dict[str, Any]) -> str:
    """The body, as Standard Webhooks suggests: ``{type, timestamp, data}``."""
    return json.dumps({"type": event, "timestamp": _when(event_id), "data": data}, separators=(",", ":"), default=str)


class Watcher:
    def __init__(self, runtime: Runtime, outbox: Outbox) -> None:
        self.rt = runtime
        self.outbox = outbox
        self._polls = 0

    async def run_once(self) -> int:
        """Read every watched job's new events; returns how many deliveries were created."""
        redis, keys = self.rt.redis, self.outbox.keys
        ids = [_s(i) for i in await redis.zrange(keys.jobs, 0, WATCH_BATCH - 1)]
        if not ids:
            return 0
        cursors = [_s(c) if c else "" for c in await redis.hmget(keys.cursors, ids)]
        streams: dict[Any, Any] = {self.rt.store.keys.events(j): c or "0-0" for j, c in zip(ids, cursors, strict=True)}
        read: Any = await redis.xread(streams, count=200)
        found: dict[str, list[Any]] = {_s(name): entries for name, entries in read or []}
        created = 0
        for job_id, cursor in zip(ids, cursors, strict=True):
            entries = found.get(self.rt.store.keys.events(job_id))
            if entries:
                created += await self._advance(job_id, cursor, entries)
        self._polls += 1
        if self._polls % 40 == 0:
            await self._forget_gone(ids)
        return created

    async def _forget_gone(self, ids: list[str]) -> None:
        """Stop watching jobs whose record expired or was deleted."""
        pipe = self.rt.redis.pipeline(transaction=False)
        for j in ids:
            pipe.exists(self.rt.store.keys.job(j))
        gone = [j for j, alive in zip(ids, await pipe.execute(), strict=True) if not alive]
        if gone:
            await self.rt.redis.zrem(self.outbox.keys.jobs, *gone)

    async def _advance(self, job_id: str, cursor: str, entries: list[Any]) -> int:
        raw = await self.rt.store.raw(job_id)
        url = raw.get("webhook")
        if not url:
            await self.rt.redis.zrem(self.outbox.keys.jobs, job_id)
            return 0
        mile_raw = await self.rt.redis.hget(self.outbox.keys.milestones, job_id)
        mile = last = int(_s(mile_raw)) if mile_raw else 0
        labels = json.loads(raw.get("labels") or "[]")
        new: list[NewDelivery] = []
        done = False

        def add(event: str, eid: str, key: str, data: dict[str, Any]) -> None:
            body = {"job_id": job_id, "labels": labels, **data}
            new.append(NewDelivery(delivery_id(job_id, eid, key), event, url, payload(event, eid, body)))

        for eid_raw, fields in entries:
            eid = _s(eid_raw)
            f = {_s(k): _s(v) for k, v in fields.items()}
            etype, data = f.get("type"), json.loads(f.get("data") or "{}")
            if etype == "status" and data.get("status") == "running" and not data.get("cancel_requested"):
                add("job.started", eid, "started", {"status": "running", "attempt": data.get("attempt")})
            elif etype == "progress":
                pct = float(data.get("value") or 0) * 100
                for ms in MILESTONES:
                    if pct >= ms > mile:
                        mile = ms
                        add("job.progress", eid, f"progress:{ms}", {"status": "running", "milestone": ms / 100,
                            "progress": data})  # fmt: skip
            elif etype == "done" and data.get("status") in FINAL_STATES:
                status = data["status"]
                add(f"job.{status}", eid, status, await self._final(job_id, status))
                done = True
                break
        end = _s(entries[-1][0]) if not done else eid
        ok = await self.outbox.advance(job_id, cursor, end, mile if mile != last else None, done, new)
        if not ok:
            return 0
        for d in new:
            log.info("webhook queued", job_id=job_id, webhook_event=d.event, delivery=d.id)
        return len(new)

    async def _final(self, job_id: str, status: str) -> dict[str, Any]:
        job = await self.rt.store.get(job_id)
        if job is None:
            return {"status": status}
        data = job.model_dump(mode="json", exclude={"worker", "owner", "request", "labels"})
        role = await self.rt.redis.hget(self.rt.store.keys.job(job_id), "role")
        if (role.decode() if isinstance(role, bytes) else role) != "internal":
            redact_job(data)  # a tenant's webhook learns what its API view shows, nothing more
        data["status"] = status  # as of the event (the job may have been retried since)
        data["links"] = {"self": f"/api/v1/jobs/{job_id}", "events": f"/api/v1/jobs/{job_id}/events"}
        return data
