"""Batches in core: expansion and validation, the bulk submit, counts kept by the Lua transitions, cancel, retry."""

from __future__ import annotations

import pytest

from comfyflow.core.batches import BatchRequest, BatchStore, expand
from comfyflow.core.submission import quota_key
from comfyflow.errors import ValidationError
from comfyflow.models import JobState
from tests.core.conftest import running_worker


def test_sweep_is_a_cartesian_product_of_validated_requests() -> None:
    req = BatchRequest(base={"prompt": "fox", "steps": 2}, sweep={"seed": [1, 2, 3], "prompt": ["a", "b"]})
    items = expand(req, batch_id="b" * 32, max_items=100)
    assert len(items) == 6
    assert [(i.seed, i.prompt) for i in items] == [(1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "a"), (3, "b")]
    assert all(i.steps == 2 and i.labels[0] == "batch:" + "b" * 32 for i in items)


def test_invalid_items_name_their_position() -> None:
    req = BatchRequest(items=[{"prompt": "ok"}, {"prompt": "bad", "steps": 0}])
    with pytest.raises(ValidationError) as info:
        expand(req, batch_id="x" * 32, max_items=10)
    assert info.value.details[0]["field"] == "items.1.steps"
    sweep = BatchRequest(base={"prompt": "fox"}, sweep={"cfg_scale": [7, 99]})
    with pytest.raises(ValidationError) as info:
        expand(sweep, batch_id="x" * 32, max_items=10)
    assert info.value.details[0]["field"] == "sweep[1].cfg_scale"


def test_too_many_items_is_refused_with_the_limit() -> None:
    req = BatchRequest(base={"prompt": "fox"}, sweep={"seed": list(range(30)), "cfg_scale": [5, 6, 7, 8]})
    with pytest.raises(ValidationError, match=r"120 sweep combinations; at most 100"):
        expand(req, batch_id="x" * 32, max_items=100)


@pytest.mark.parametrize("body", [{}, {"items": [{"prompt": "a"}], "base": {"prompt": "b"}}, {"base": {"prompt": "a"}}])
def test_batch_request_takes_exactly_one_form(body) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match=r"either|sweep"):
        BatchRequest(**body)


async def test_batch_runs_every_item_and_counts_follow_the_transitions(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    batches = BatchStore(rt.store)
    req = BatchRequest(base={"prompt": "fox", "steps": 2}, sweep={"seed": list(range(12))}, priority="low")
    created = await batches.create(expand(req, batch_id="1" * 32, max_items=100), owner="alice", batch_id="1" * 32)
    assert created.outcome == "ok"
    batch = await batches.get(created.batch_id)
    assert batch is not None and batch.total == 12 and batch.counts["queued"] == 12 and batch.status == "queued"
    assert await batches.backlog() == 12
    ids = await batches.item_ids(created.batch_id, 0, 100)
    assert len(ids) == 12
    job = await rt.store.get(ids[0])
    assert job is not None and job.batch_id == created.batch_id and job.priority.value == "low"
    async with running_worker(rt):
        for _ in range(300):
            batch = await batches.get(created.batch_id)
            if batch is not None and batch.status not in ("queued", "running"):
                break
            await __import__("asyncio").sleep(0.05)
    assert batch is not None and batch.status == "succeeded", batch
    assert batch.counts["succeeded"] == 12 and batch.counts["queued"] == batch.counts["running"] == 0
    assert batch.progress == 1.0 and batch.finished_at is not None
    assert await batches.backlog() == 0
    jobs = await batches.jobs(ids)
    assert all(j is not None and j.status == JobState.SUCCEEDED for j in jobs)


async def test_cancel_then_retry_the_failed_items(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    batches = BatchStore(rt.store)
    reqs = expand(BatchRequest(base={"prompt": "fox"}, sweep={"seed": list(range(1100))}), batch_id="2" * 32,
                  max_items=2000)  # fmt: skip
    created = await batches.create(reqs, owner="bob", batch_id="2" * 32)
    outcomes = await batches.cancel(created.batch_id)
    assert outcomes == {"canceled": 1100}
    batch = await batches.get(created.batch_id)
    assert batch is not None and batch.status == "canceled" and batch.counts["canceled"] == 1100
    assert await batches.retry(created.batch_id) == 0, "canceled items are re-run only when asked"
    assert await batches.retry(created.batch_id, include_canceled=True) == 1100
    batch = await batches.get(created.batch_id)
    assert batch is not None and batch.counts["queued"] == 1100 and batch.status == "queued"
    assert batch.finished_at is None and not batch.cancel_requested


async def test_daily_quota_counts_every_item_atomically(runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory()
    batches = BatchStore(rt.store)
    qkey = quota_key(rt.store.keys.prefix, "carol", "20250101")
    reqs = expand(BatchRequest(base={"prompt": "fox"}, sweep={"seed": [1, 2, 3]}), batch_id="3" * 32, max_items=10)
    assert (await batches.create(reqs, owner="carol", daily_quota=(qkey, 5))).outcome == "ok"
    refused = await batches.create(reqs, owner="carol", daily_quota=(qkey, 5))
    assert refused.outcome == "quota" and refused.used == 3
    assert int(await rt.redis.get(qkey)) == 3, "a refused batch counts nothing"
    assert await rt.redis.zcard(rt.store.keys.owner_batches("carol")) == 1


async def test_idempotency_key_replays_the_batch(runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory()
    batches = BatchStore(rt.store)
    reqs = expand(BatchRequest(items=[{"prompt": "a"}]), batch_id="4" * 32, max_items=10)
    idem = (f"{rt.store.keys.prefix}:idem:k", "fp1")
    first = await batches.create(reqs, owner="dan", idempotency=idem)
    again = await batches.create(reqs, owner="dan", idempotency=idem)
    other = await batches.create(reqs, owner="dan", idempotency=(idem[0], "fp2"))
    assert again.outcome == "existing" and again.batch_id == first.batch_id
    assert other.outcome == "mismatch"
    assert await rt.redis.zcard(rt.store.keys.owner_batches("dan")) == 1
