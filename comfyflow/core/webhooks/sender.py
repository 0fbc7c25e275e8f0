"""Delivering one webhook try: check the target, sign, POST, record the outcome, schedule the next try.

A 2xx answer delivers; anything else (another status, a timeout, a refused connection) is retried with
exponential backoff up to ``max_attempts`` tries per round; a target on a disallowed address is refused at once.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import structlog

from comfyflow import __version__
from comfyflow import metrics as m
from comfyflow.core.recorder import Recorder
from comfyflow.core.webhooks.outbox import FINAL, Outbox
from comfyflow.core.webhooks.signing import Signer
from comfyflow.core.webhooks.targets import GuardedResolver, TargetRefused, check_target
from comfyflow.webhook_settings import WebhookSettings

log = structlog.get_logger("comfyflow.webhooks")

MAX_RESPONSE_BYTES = 64 * 1024


def backoff(settings: WebhookSettings, tries: int) -> float:
    return float(min(settings.backoff_max_seconds, settings.backoff_seconds * 2 ** max(0, tries - 1)))


class Sender:
    """Open with ``async with`` (one HTTP client per process)."""

    def __init__(self, outbox: Outbox, signer: Signer, settings: WebhookSettings, metrics: Recorder) -> None:
        self.outbox = outbox
        self.signer = signer
        self.settings = settings
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.settings.allow_networks), limit=64)
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.session is not None:
            await self.session.close()

    async def deliver(self, delivery_id: str) -> str:
        """One try of a claimed delivery; returns its outcome (delivered, retrying, failed, refused, gone)."""
        d = await self.outbox.get(delivery_id)
        if not d or d.get("status") in FINAL:
            await self.outbox.drop(delivery_id)
            return "gone"
        tries, attempts = await self.outbox.start_try(delivery_id)
        started, at = time.monotonic(), time.time()
        code: int | None = None
        error: str | None = None
        outcome = ""
        try:
            await check_target(d["url"], self.settings.allow_networks)
            code = await self._post(d["url"], delivery_id, d["payload"])
            if 200 <= code < 300:
                outcome = "delivered"
            else:
                error = f"HTTP {code}"
        except TargetRefused as exc:
            outcome, error = "refused", exc.message
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if not outcome:
            outcome = "retrying" if tries < self.settings.max_attempts else "failed"
        next_at = time.time() + backoff(self.settings, tries) if outcome == "retrying" else None
        record = {
            "attempt": attempts,
            "try": tries,
            "trigger": d.get("trigger") or "initial",
            "at": at,
            "duration_s": round(time.monotonic() - started, 4),
            "status_code": code,
            "error": error,
            "outcome": outcome,
        }
        status = {"delivered": "delivered", "retrying": "pending"}.get(outcome, "failed")
        await self.outbox.record(delivery_id, record, status=status, next_at=next_at)
        self.metrics.add(m.WEBHOOK_DELIVERIES, d.get("event", "unknown"), outcome)
        log.info(
            "webhook delivery", delivery=delivery_id, job_id=d.get("job_id"), webhook_event=d.get("event"),
            outcome=outcome, status_code=code, error=error, attempt=attempts,
        )  # fmt: skip
        return outcome

    async def _post(self, url: str, delivery_id: str, body: str) -> int:
        assert self.session is not None
        headers = {
            **self.signer.headers(delivery_id, body),
            "content-type": "application/json",
            "user-agent": f"comfyflow/{__version__} (+webhooks)",
        }
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        async with self.session.post(
            url, data=body.encode(), headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            await resp.content.read(MAX_RESPONSE_BYTES)
            return resp.status
