"""A job waiting for a GPU slot takes it the moment any process frees one, not at its next poll: with renders
as short as 0.1 s, a poll-sized gap is idle GPU time."""

from __future__ import annotations

import asyncio

import pytest

from comfyflow.core import slots as slots_module
from comfyflow.core.slots import SlotPool
from tests.core.conftest import running_worker
from tests.waiting import until


@pytest.mark.parametrize("freed_by", ["this process", "another process"])
async def test_a_waiter_takes_a_freed_slot_at_once(fake, runtime_factory, monkeypatch, freed_by) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(slots_module, "MAX_POLL_SECONDS", 600.0)  # only the wake-up can hand it over in time
    rt = await runtime_factory(backends=[fake.url])
    async with running_worker(rt, concurrency=1):  # its control-channel listener is the other processes' ear
        channel = rt.store.keys.control
        await until(lambda: _subscribers(rt, channel))
        holder = (
            rt.slots
            if freed_by == "this process"
            else SlotPool(rt.redis, rt.store.keys, rt.slots.capacities, lease_seconds=60)
        )
        held = [await holder.try_acquire([fake.url]) for _ in range(rt.slots.capacities[fake.url])]
        assert all(held) and await holder.try_acquire([fake.url]) is None
        waiter = asyncio.create_task(rt.slots.acquire([fake.url], timeout=600, poll=600))
        for _ in range(20):  # let it find the slots full and start waiting
            await asyncio.sleep(0.01)
        assert not waiter.done()
        await holder.release(held[0])  # type: ignore[arg-type]
        lease = await asyncio.wait_for(waiter, 10)
    assert lease.backend == fake.url
    await rt.slots.release(lease)


async def _subscribers(rt, channel: str) -> bool:  # type: ignore[no-untyped-def]
    counts = await rt.redis.pubsub_numsub(channel)
    return bool(counts and counts[0][1] > 0)
