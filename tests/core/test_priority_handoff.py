"""A free slot goes to higher-priority work waiting in the queue before a lower-priority job already waiting
for it, within a bounded budget (so nothing waits on it forever)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from comfyflow.core import routing


async def test_low_job_leaves_a_free_slot_while_higher_work_waits(runtime_factory: Any) -> None:
    rt = await runtime_factory(backends=["http://127.0.0.1:9"], backend_slots=1)
    url = "http://127.0.0.1:9"
    waiting = {"high": True}

    async def higher_waiting() -> bool:
        return waiting["high"]

    task = asyncio.create_task(routing.acquire(rt.pool, rt.slots, [url], timeout=10, higher_waiting=higher_waiting))
    await asyncio.sleep(0.5)
    assert not task.done(), "the low job took the slot while a high job was waiting for it"
    high = await rt.slots.try_acquire([url])  # the high job, claimed meanwhile, gets the free slot
    assert high is not None
    waiting["high"] = False
    await asyncio.sleep(0.3)
    assert not task.done(), "no room yet: the high job holds the only slot"
    await rt.slots.release(high)
    lease = await asyncio.wait_for(task, 2)
    assert lease.backend == url


async def test_yielding_is_bounded(runtime_factory: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(routing, "YIELD_BUDGET_SECONDS", 0.5)
    rt = await runtime_factory(backends=["http://127.0.0.1:9"], backend_slots=1)

    async def always() -> bool:
        return True

    started = time.monotonic()
    lease = await routing.acquire(rt.pool, rt.slots, ["http://127.0.0.1:9"], timeout=10, higher_waiting=always)
    assert lease is not None and 0.4 < time.monotonic() - started < 3
