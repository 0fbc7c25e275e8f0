"""Priorities end to end: a big low-priority batch does not hold up an interactive high-priority job, and low
still progresses."""

from __future__ import annotations

import asyncio

from comfyflow.core.attempt import prompt_id_for
from comfyflow.core.batches import BatchRequest, BatchStore, expand
from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done


async def test_high_job_starts_in_the_next_free_slot_behind_a_low_batch(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 0.1
    rt = await runtime_factory(backends=[fake.url])  # defaults: 4 jobs per worker, 2 slots per backend
    batches = BatchStore(rt.store)
    reqs = expand(BatchRequest(base={"prompt": "bulk", "steps": 1}, sweep={"seed": list(range(500))}, priority="low"),
                  batch_id="5" * 32, max_items=1000)  # fmt: skip
    await batches.create(reqs, owner="bulk", batch_id="5" * 32)
    async with running_worker(rt):
        for _ in range(1000):  # the batch is being worked on: every slot is busy with low items
            if len(fake.prompts_posted) >= 10:
                break
            await asyncio.sleep(0.01)
        posted_before = len(fake.prompts_posted)
        high = (await rt.store.submit(Txt2ImgRequest(prompt="interactive", steps=1, priority="high"))).job
        assert high is not None
        done = await wait_done(rt, high.job_id, timeout=30)
        order = list(fake.prompts_posted)
        batch = await batches.get("5" * 32)
    assert done.status == JobState.SUCCEEDED
    position = order.index(prompt_id_for(high.job_id, 1))
    lows_first = position - posted_before
    # The next slot that frees goes to the high job: low items already claimed (a worker claims more jobs than
    # there are slots) leave free slots to higher-priority work waiting in the queue.
    assert lows_first == 0, f"{lows_first} low items started before the high job"
    assert batch is not None and 0 < batch.counts["succeeded"] < 500, "low kept going, and was far from done"
