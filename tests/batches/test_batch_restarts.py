"""A batch survives a restart of Redis with persistence (the embedded server: AOF + a save on stop) and of its
workers: counts, items and the queue come back, and the rest of the batch runs, each item once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from comfyflow.core.attempt import prompt_id_for
from comfyflow.core.batches import BatchRequest, BatchStore, expand
from comfyflow.core.runtime import Runtime
from comfyflow.embedded import ensure_redis
from comfyflow.embedded.redis import stop_redis
from tests.core.conftest import running_worker


async def test_batch_survives_a_redis_restart(fake, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "redis-home"
    url = await asyncio.to_thread(ensure_redis, home)
    settings = make_settings(backends=[fake.url], redis_url=url)
    try:
        rt = await Runtime.open(settings, url)
        reqs = expand(BatchRequest(base={"prompt": "fox", "steps": 1}, sweep={"seed": list(range(30))}),
                      batch_id="6" * 32, max_items=100)  # fmt: skip
        await BatchStore(rt.store).create(reqs, owner="ops", batch_id="6" * 32)
        fake.render_time = 0.05
        async with running_worker(rt, concurrency=1):
            for _ in range(400):
                before = await BatchStore(rt.store).get("6" * 32)
                if before is not None and before.counts["succeeded"] >= 5:
                    break
                await asyncio.sleep(0.02)
        before = await BatchStore(rt.store).get("6" * 32)
        await rt.aclose()
        assert before is not None and 5 <= before.counts["succeeded"] < 30
        await asyncio.to_thread(stop_redis, home)
        assert await asyncio.to_thread(ensure_redis, home) == url
        fake.render_time = 0.0
        rt = await Runtime.open(settings, url)
        batches = BatchStore(rt.store)
        after = await batches.get("6" * 32)
        assert after is not None and after.counts == before.counts and after.total == 30
        async with running_worker(rt):
            for _ in range(600):
                after = await batches.get("6" * 32)
                if after is not None and after.status == "succeeded":
                    break
                await asyncio.sleep(0.05)
        assert after is not None and after.status == "succeeded" and after.counts["succeeded"] == 30, after
        ids = await batches.item_ids("6" * 32, 0, 100)
        jobs = await batches.jobs(ids)
        posted = fake.prompts_posted
        assert all(j is not None and sum(posted.get(prompt_id_for(j.job_id, a), 0) for a in (1, 2, 3)) == 1
                   for j in jobs)  # fmt: skip
        await rt.aclose()
    finally:
        await asyncio.to_thread(stop_redis, home)
