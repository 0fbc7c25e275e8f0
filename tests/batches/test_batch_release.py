"""A batch is staged, committed in one short script, then released a chunk at a time (so no script blocks Redis for
long): still all or nothing, items invisible and never claimed before the commit, and an API process that dies
in the middle of the release leaves work that the batch's watcher finishes, each item queued exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from comfyflow.core import batches as batches_mod
from comfyflow.core.batches import BatchRequest, BatchStore, expand
from comfyflow.core.keys import PRIORITIES
from comfyflow.core.pipelines.execution import watch_batch
from comfyflow.core.queue import QueueReader

BID = "7" * 32


def _items(n: int) -> list[Any]:
    req = BatchRequest(base={"prompt": "fox", "steps": 2}, sweep={"seed": list(range(n))})
    return expand(req, batch_id=BID, max_items=n)


def _die_on(rt: Any, script: str, call: int) -> None:
    """The process dies when it sends its ``call``-th ``script`` (nothing of that call reaches Redis)."""
    real = rt.store.scripts.run
    seen = 0

    async def run(name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        nonlocal seen
        if name == script:
            seen += 1
            if seen >= call:
                raise RedisConnectionError("killed")
        return await real(name, keys, args, client=client)

    rt.store.scripts.run = run


async def _queued_messages(rt: Any) -> int:
    return sum([await rt.redis.xlen(rt.store.keys.queue(p)) for p in PRIORITIES])


async def test_items_staged_but_not_committed_are_invisible_unclaimable_and_expire(runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory()
    _die_on(rt, "batch_submit", 1)
    with pytest.raises(RedisConnectionError):
        await BatchStore(rt.store).create(_items(30), owner="alice", batch_id=BID)
    keys = rt.store.keys
    assert await rt.redis.hlen(keys.batch_staging(BID)) == 30, "the items were staged"
    assert 0 < await rt.redis.ttl(keys.batch_staging(BID)) <= batches_mod.STAGING_TTL_SECONDS
    assert 0 < await rt.redis.ttl(keys.batch_order(BID)) <= batches_mod.STAGING_TTL_SECONDS
    assert await BatchStore(rt.store).get(BID) is None
    assert await rt.redis.zcard(keys.owner_jobs("alice")) == 0
    assert await _queued_messages(rt) == 0
    assert [k async for k in rt.redis.scan_iter(match=f"{keys.prefix}:job:*")] == []
    reader = QueueReader(rt.redis, keys, "w1", rt.settings.priority_weights)
    assert await reader.try_next() is None, "nothing can be claimed"
    # a watcher (or anyone) releasing an uncommitted batch releases nothing
    await BatchStore(rt.store).release(BID)
    assert await _queued_messages(rt) == 0


async def test_an_api_dead_mid_release_leaves_the_rest_to_the_batch_watcher(runtime_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(batches_mod, "RELEASE_CHUNK", 40)
    rt = await runtime_factory()
    _die_on(rt, "batch_release", 2)  # the first chunk of 40 is released, then the API process dies
    with pytest.raises(RedisConnectionError):
        await BatchStore(rt.store).create(_items(100), owner="alice", batch_id=BID)
    keys = rt.store.keys
    committed = await BatchStore(rt.store).get(BID)
    assert committed is not None and committed.total == 100 and committed.counts["queued"] == 100
    assert await rt.redis.llen(keys.batch_items(BID)) == 40

    healthy = await runtime_factory(key_prefix=rt.settings.key_prefix)
    watcher = asyncio.create_task(watch_batch(healthy, BID, every=0.05))
    try:
        for _ in range(400):
            if await healthy.redis.llen(keys.batch_items(BID)) == 100:
                break
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    ids = [i.decode() for i in await healthy.redis.lrange(keys.batch_items(BID), 0, -1)]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert await _queued_messages(healthy) == 100, "each item queued exactly once"
    assert await healthy.redis.zcard(keys.owner_jobs("alice")) == 100
    jobs = await BatchStore(healthy.store).jobs(ids)
    assert all(j is not None and j.status.value == "queued" and j.batch_id == BID for j in jobs)
    assert [j.request["seed"] for j in jobs if j is not None] == list(range(100)), "in submission order"
    assert not await healthy.redis.exists(keys.batch_staging(BID), keys.batch_order(BID))
    assert await healthy.redis.get(keys.batch_backlog) == b"100"
