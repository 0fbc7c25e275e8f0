"""Two worker processes and three fake ComfyUI backends with different checkpoints: jobs go only where their model
is, no backend ever holds more prompts than its capacity, and losing a backend or a worker loses nothing."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from comfyflow.core.pool import Health
from comfyflow.models import JobState, Txt2ImgRequest
from tests.scale.conftest import (
    CAPACITY,
    MODELS,
    Processes,
    artifact_sets,
    restarted,
    wait_all,
    worker_env,
)
from tests.waiting import until

pytestmark = pytest.mark.slow


def _request(model: str | None, i: int) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt=f"fox {i}", width=64, height=64, steps=2, seed=i, model=model)


async def _submit(rt, models) -> list[str]:  # type: ignore[no-untyped-def]
    return [(await rt.store.submit(_request(m, i))).job.job_id for i, m in enumerate(models)]  # type: ignore[union-attr]


def _start_workers(processes: Processes, rt, n: int = 2, concurrency: int = 6) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        processes.start(f"worker{i}", ["worker", "--concurrency", str(concurrency)], worker_env(rt.settings))


def _in_flight_ok(fakes) -> None:  # type: ignore[no-untyped-def]
    over = {name: f.max_in_flight for name, f in fakes.items() if f.max_in_flight > CAPACITY}
    assert not over, f"backends held more prompts than their {CAPACITY} slots: {over}"


async def test_200_jobs_each_on_a_backend_with_its_model(fakes, scale_runtime, processes) -> None:  # type: ignore[no-untyped-def]
    rt = await scale_runtime()
    _start_workers(processes, rt)
    models = list(itertools.islice(itertools.cycle([*MODELS, None]), 200))  # None: the pool's default checkpoint
    job_ids = await _submit(rt, models)
    jobs = await wait_all(rt, job_ids, timeout=90, procs=processes)

    by_url = {f.url: f for f in fakes.values()}
    failed = [j for j in jobs if j.status != JobState.SUCCEEDED]
    assert not failed, f"{len(failed)} failed, e.g. {failed[0].error}"
    for job in jobs:
        assert job.result is not None and job.result.backend in by_url
        model = job.request.get("model") or "alpha.safetensors"  # the first usable backend's first checkpoint
        assert model in by_url[job.result.backend].checkpoints, f"{job.job_id} ran {model} on {job.result.backend}"
        assert artifact_sets(rt, job.job_id) == ["0.png", "metadata.json"]
    _in_flight_ok(fakes)
    posted = [n for f in fakes.values() for n in f.prompts_posted.values()]
    assert len(posted) == 200 and set(posted) == {1}, "one prompt per job, none posted twice"
    assert all(f.prompts_posted for f in fakes.values()), "every backend got work"
    for url in by_url:
        assert await rt.slots.in_use(url) == 0


async def test_backend_killed_mid_run_jobs_move_and_it_rejoins(fakes, scale_runtime, processes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for fake in fakes.values():
        fake.render_time = 0.3
    rt = await scale_runtime()
    _start_workers(processes, rt, concurrency=4)
    victim = fakes["a"]
    job_ids = await _submit(rt, [MODELS[i % 3] for i in range(36)])

    await until(lambda: len(victim.prompts_posted) >= 4, timeout=30, what="the victim got work")
    state = victim.state()
    on_victim = set(state["queue"]["running"] + state["queue"]["pending"])
    assert on_victim, "the victim had prompts in flight when it was killed"
    await victim.stop()

    async def marked(health: Health) -> bool:
        s = (await rt.pool.view(fresh=True)).get(victim.url)
        return s is not None and s.health is health

    await until(lambda: marked(Health.DOWN), timeout=10, what="the killed backend marked down")
    jobs = await wait_all(rt, job_ids, timeout=90, procs=processes)
    assert all(j.status == JobState.SUCCEEDED for j in jobs), [j.error for j in jobs if j.error]

    moved = [j for j in jobs if on_victim & {p["prompt_id"] for p in await _prompts(rt, j.job_id)}]
    assert moved, "the jobs running on the killed backend are known"
    for job in moved:
        assert job.result is not None and job.result.backend != victim.url, "finished elsewhere"
        assert job.attempt >= 2
    for job in jobs:
        assert artifact_sets(rt, job.job_id) == ["0.png", "metadata.json"], "exactly one set of artifacts"

    async with restarted(victim, tmp_path / "fake-a-again") as again:
        await until(lambda: marked(Health.UP), timeout=10, what="the restarted backend marked up")
        more = await _submit(rt, ["alpha.safetensors"] * 12)  # on a and c only
        done = await wait_all(rt, more, timeout=60, procs=processes)
        assert all(j.status == JobState.SUCCEEDED for j in done)
        assert again.prompts_posted, "the restarted backend rejoined and got jobs"
        assert any(j.result is not None and j.result.backend == again.url for j in done)
        assert again.max_in_flight <= CAPACITY
    _in_flight_ok(fakes)


async def _prompts(rt, job_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    raw = await rt.store.raw(job_id)
    return json.loads(raw["prompts"]) if raw.get("prompts") else []


async def test_worker_sigkilled_mid_run_loses_and_duplicates_nothing(fakes, scale_runtime, processes) -> None:  # type: ignore[no-untyped-def]
    for fake in fakes.values():
        fake.render_time = 0.25
    rt = await scale_runtime()
    _start_workers(processes, rt, concurrency=4)
    job_ids = await _submit(rt, [MODELS[i % 3] for i in range(40)])

    async def victim_busy() -> bool:
        workers = {(await rt.store.raw(j)).get("worker", "") for j in job_ids}
        return sum(1 for f in fakes.values() for _ in f.prompts_posted) >= 8 and len(workers - {""}) >= 2

    await until(victim_busy, timeout=30, what="both workers running jobs")
    processes.kill("worker0")
    jobs = await wait_all(rt, job_ids, timeout=90, procs=processes)
    assert all(j.status == JobState.SUCCEEDED for j in jobs), [j.error for j in jobs if j.error]
    assert any(j.attempt >= 2 for j in jobs), "the killed worker's jobs were reclaimed"
    for job in jobs:
        assert artifact_sets(rt, job.job_id) == ["0.png", "metadata.json"], "exactly one set of artifacts"
    posted = [n for f in fakes.values() for n in f.prompts_posted.values()]
    assert set(posted) == {1}, "no prompt posted twice (reclaimed jobs adopt their prompt)"
    assert len(posted) <= len(job_ids) + 4, "at most one extra render per job the killed worker held"
    _in_flight_ok(fakes)
    await asyncio.sleep(rt.settings.slot_lease_seconds + 0.5)  # any lease of the dead worker has expired now
    for fake in fakes.values():
        assert await rt.slots.in_use(fake.url) == 0, "no slot leaked"
