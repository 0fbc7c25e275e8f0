"""The fleet's metric totals in Redis: facts recorded by the state scripts, folded exactly once by any process."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from comfyflow import metrics as m
from comfyflow.core.recorder import Recorder, fact_increments, facts_key
from comfyflow.core.store import Claim, JobStore, QueueMessage
from comfyflow.models import ErrorInfo, JobResult, Txt2ImgRequest


def _fact(i: int, state: str = "succeeded") -> str:
    return json.dumps(["finish", state, f"job{i}", "1", "pro", "le_2mp", "normal", "100.0", "101.0", "104.0",
                       "105.0", "EXECUTION_ERROR" if state == "failed" else False])  # fmt: skip


def test_a_succeeded_fact_counts_the_job_and_its_phases() -> None:
    incs = fact_increments(_fact(1))
    series = m.field_key(m.JOBS_FINISHED, ("succeeded", "pro", "none"))
    assert incs[series] == 1
    assert incs[m.field_key(m.JOB_DURATION, ("queue_wait", "le_2mp"), "sum")] == 1.0
    assert incs[m.field_key(m.JOB_DURATION, ("render", "le_2mp"), "sum")] == 3.0
    assert incs[m.field_key(m.JOB_DURATION, ("total", "le_2mp"), "sum")] == 5.0
    assert incs[m.field_key(m.JOB_DURATION, ("total", "le_2mp"), f"b{m.DURATION_BUCKETS.index(5)}")] == 1
    failed = fact_increments(_fact(2, "failed"))
    assert failed == {m.field_key(m.JOBS_FINISHED, ("failed", "pro", "EXECUTION_ERROR")): 1.0}
    assert fact_increments(b"not json") == {}


async def test_concurrent_folds_count_every_fact_once(redis: Redis, prefix: str) -> None:
    recorders = [Recorder(redis, prefix) for _ in range(4)]
    for chunk in range(5):
        await redis.rpush(facts_key(prefix), *[_fact(chunk * 1000 + i) for i in range(1000)])

    async def more() -> None:  # facts keep arriving while others fold
        for i in range(200):
            await redis.rpush(facts_key(prefix), _fact(10_000 + i, "failed"))

    await asyncio.gather(more(), *[r.flush() for r in recorders], *[r.flush() for r in recorders])
    await recorders[0].flush()
    totals = await recorders[0].totals()
    assert totals[m.field_key(m.JOBS_FINISHED, ("succeeded", "pro", "none"))] == 5000
    assert totals[m.field_key(m.JOBS_FINISHED, ("failed", "pro", "EXECUTION_ERROR"))] == 200
    assert totals[m.field_key(m.JOB_DURATION, ("total", "le_2mp"), "sum")] == 5 * 5000
    assert await redis.llen(facts_key(prefix)) == 0


async def test_buffered_increments_reach_redis_within_the_interval(redis: Redis, prefix: str) -> None:
    rec = Recorder(redis, prefix, interval=0.05)
    for _ in range(10):
        rec.add(m.STORAGE_BYTES, value=100)
    rec.add(m.HTTP_DURATION, "/x", "GET", value=0.2)
    for _ in range(50):
        totals = await rec.totals()
        if totals:
            break
        await asyncio.sleep(0.02)
    assert totals[m.field_key(m.STORAGE_BYTES, ())] == 1000
    assert totals[m.field_key(m.HTTP_DURATION, ("/x", "GET"), f"b{m.HTTP_BUCKETS.index(0.25)}")] == 1
    await rec.aclose()


async def test_increments_are_kept_while_redis_is_away(prefix: str) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    rec = Recorder(dead, prefix, interval=60)
    rec.add(m.STORAGE_ERRORS)
    with pytest.raises(Exception):  # noqa: B017 - any connection error
        await rec.flush()
    assert rec._pending == {m.field_key(m.STORAGE_ERRORS, ()): 1.0}
    await rec.aclose()  # its flush timer would fire 60 s later, in whatever test then runs, and log a warning
    assert rec._task is None or rec._task.done()
    await dead.aclose()
    with pytest.raises(ValueError):
        m.increments(m.QUEUE_DEPTH, ("high",))


async def test_state_transitions_record_facts(redis: Redis, make_settings, prefix: str) -> None:  # type: ignore[no-untyped-def]
    store = JobStore(redis, make_settings())
    await store.ensure_groups()
    req = Txt2ImgRequest(prompt="fox", width=64, height=64)
    ok = (await store.submit(req, extra={"role": "free"})).job
    bad = (await store.submit(req.model_copy(update={"width": 2048, "height": 2048}))).job
    queued = (await store.submit(req, extra={"role": "pro"})).job
    assert ok and bad and queued
    for job in (ok, bad):
        msgs = await redis.xreadgroup("workers", "w", {store.keys.queue("normal"): ">"}, count=1)
        (_stream, [(msg_id, _fields)]) = msgs[0]
        claim = await store.claim(QueueMessage(store.keys.queue("normal"), msg_id.decode(), job.job_id, 1), "w")
        assert isinstance(claim, Claim)
        await store.update(claim, render_started_at=repr(store.clock()), render_finished_at=repr(store.clock()))
        if job is ok:
            assert await store.complete(claim, JobResult())
        else:
            await store.give_up_attempt(claim, ErrorInfo(code="STALLED", message="x", transient=True), delay=0)
    assert await store.cancel(queued.job_id) == "canceled"
    rec = Recorder(redis, prefix)
    await rec.flush()
    t = await rec.totals()
    assert t[m.field_key(m.JOBS_SUBMITTED, ("free", "normal"))] == 1
    assert t[m.field_key(m.JOBS_SUBMITTED, ("unknown", "normal"))] == 1  # no role given: unknown
    assert t[m.field_key(m.JOBS_SUBMITTED, ("pro", "normal"))] == 1
    assert t[m.field_key(m.JOBS_FINISHED, ("succeeded", "free", "none"))] == 1
    assert t[m.field_key(m.JOBS_FINISHED, ("canceled", "pro", "none"))] == 1
    assert t[m.field_key(m.JOB_RETRIES, ("STALLED",))] == 1
    assert t[m.field_key(m.JOB_DURATION, ("total", "le_2mp"), "sum")] >= 0
    assert m.field_key(m.JOB_DURATION, ("total", "gt_2mp"), "sum") not in t  # it never succeeded
