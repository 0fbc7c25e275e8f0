"""Running-job limits per owner, in the engine: a claim beyond the limit parks the job (still queued, same
attempt, no attempt used), and every way a job stops running or leaves the queue wakes the next parked one."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from comfyflow.core.owners import parked_jobs, running_jobs, set_owner_limits
from comfyflow.core.queue import QueueReader
from comfyflow.core.reaper import Reaper
from comfyflow.core.store import Claim, JobStore
from comfyflow.models import ErrorInfo, JobResult, JobState, Txt2ImgRequest


class Engine:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.reader = QueueReader(store.redis, store.keys, "w1", store.settings.priority_weights)

    async def submit(self, owner: str = "alice") -> str:
        job = (await self.store.submit(Txt2ImgRequest(prompt="x"), owner=owner)).job
        assert job is not None
        return job.job_id

    async def claim(self) -> Claim | None:
        """Claim the next message; None when there is none or it was parked."""
        msg = await self.reader.try_next()
        if msg is None:
            return None
        claim = await self.store.claim(msg, "w1")
        if claim is None:
            await self.store.drop_message(msg)
        return claim

    async def state(self, job_id: str) -> tuple[str, int, str]:
        job = await self.store.get(job_id)
        assert job is not None
        return job.status.value, job.attempt, job.progress.phase


@pytest.fixture
async def engine(redis: Redis, make_settings: Any) -> Engine:
    store = JobStore(redis, make_settings(max_attempts=3))
    await store.ensure_groups()
    await set_owner_limits(redis, store.keys, "alice", max_running=1, role="free")
    return Engine(store)


async def test_a_claim_beyond_the_limit_parks_the_job(engine: Engine, redis: Redis) -> None:
    j1, j2 = await engine.submit(), await engine.submit()
    c1 = await engine.claim()
    assert c1 is not None and c1.job_id == j1
    assert await engine.claim() is None  # j2: parked
    assert await engine.state(j2) == ("queued", 1, "waiting")
    assert await parked_jobs(redis, engine.store.keys, "alice") == [j2]
    assert await running_jobs(redis, engine.store.keys, "alice") == {j1}
    assert await engine.claim() is None  # nothing on the queues now
    assert await engine.store.complete(c1, JobResult(seed=1))
    assert await parked_jobs(redis, engine.store.keys, "alice") == []
    c2 = await engine.claim()  # woken: back on its queue, same attempt
    assert c2 is not None and (c2.job_id, c2.attempt) == (j2, 1)
    assert await running_jobs(redis, engine.store.keys, "alice") == {j2}


async def test_other_owners_and_unlimited_owners_are_not_held_back(engine: Engine) -> None:
    await engine.submit()
    assert await engine.claim() is not None
    await engine.submit()
    assert await engine.claim() is None
    bob = [await engine.submit("bob") for _ in range(3)]  # no limit recorded for bob
    assert [(await engine.claim()).job_id for _ in bob] == bob  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["fail", "transient", "cancel", "reaped"])
async def test_every_way_out_of_running_wakes_the_next(engine: Engine, redis: Redis, how: str) -> None:
    j1, j2 = await engine.submit(), await engine.submit()
    c1 = await engine.claim()
    assert c1 is not None and await engine.claim() is None
    if how == "fail":
        await engine.store.fail(c1, ErrorInfo(code="INVALID_GRAPH", message="bad"))
    elif how == "transient":
        await engine.store.give_up_attempt(c1, ErrorInfo(code="X", message="x", transient=True), delay=0)
    elif how == "cancel":
        assert await engine.store.cancel(j1) == "requested"
        await engine.store.confirm_canceled(c1)
    else:
        await Reaper(engine.store).run_once(min_idle_ms=0)
    assert await running_jobs(redis, engine.store.keys, "alice") == set()
    claimed = {c.job_id for c in [await engine.claim(), await engine.claim()] if c is not None}
    assert j2 in claimed and len(claimed) == 1  # one runs; with a retried j1 the other is parked again


async def test_a_woken_job_canceled_before_it_ran_passes_its_turn_on(engine: Engine, redis: Redis) -> None:
    _, j2, j3 = await engine.submit(), await engine.submit(), await engine.submit()
    c1 = await engine.claim()
    assert c1 is not None and await engine.claim() is None and await engine.claim() is None
    assert await parked_jobs(redis, engine.store.keys, "alice") == [j2, j3]
    await engine.store.complete(c1, JobResult(seed=1))  # wakes j2 only (one free slot)
    assert await parked_jobs(redis, engine.store.keys, "alice") == [j3]
    assert await engine.store.cancel(j2) == "canceled"  # j2 never ran: j3 must not wait forever
    c3 = await engine.claim()
    assert c3 is not None and c3.job_id == j3


async def test_a_parked_job_canceled_is_skipped(engine: Engine, redis: Redis) -> None:
    _, j2, j3 = await engine.submit(), await engine.submit(), await engine.submit()
    c1 = await engine.claim()
    assert c1 is not None and await engine.claim() is None and await engine.claim() is None
    assert await engine.store.cancel(j2) == "canceled"
    await engine.store.complete(c1, JobResult(seed=1))
    c3 = await engine.claim()
    assert c3 is not None and c3.job_id == j3
    assert (await engine.state(j2))[0] == JobState.CANCELED.value


async def test_a_stale_running_entry_heals(engine: Engine, redis: Redis) -> None:
    await redis.sadd(engine.store.keys.owner_running("alice"), "f" * 32)  # a job that is not running
    j1 = await engine.submit()
    c1 = await engine.claim()
    assert c1 is not None and c1.job_id == j1
    assert await running_jobs(redis, engine.store.keys, "alice") == {j1}


async def test_raising_or_lifting_the_limit(engine: Engine, redis: Redis) -> None:
    for _ in range(3):
        await engine.submit()
    assert await engine.claim() is not None and await engine.claim() is None
    await set_owner_limits(redis, engine.store.keys, "alice", max_running=None, role="internal")
    assert await engine.claim() is not None  # the third job: no limit any more
    assert len(await parked_jobs(redis, engine.store.keys, "alice")) == 1  # woken when one of the two stops
