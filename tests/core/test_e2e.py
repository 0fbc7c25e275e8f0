"""End to end without Prefect: submit -> worker -> fake ComfyUI over real sockets -> artifacts + metadata on disk.

Runs against the Redis server and the embedded one (the ``redis_url`` fixture is parametrized).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from comfyflow.models import JobState, RawGraphRequest, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done


def _root(rt) -> Path:  # type: ignore[no-untyped-def]
    return Path(urlsplit(rt.settings.resolved_storage_url).path)


async def test_txt2img_end_to_end(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 0.4
    rt = await runtime_factory(backends=[fake.url])
    async with running_worker(rt):
        job = (
            await rt.store.submit(Txt2ImgRequest(prompt="a red fox", width=64, height=64, steps=4, batch_size=2))
        ).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.result is not None and len(done.result.artifacts) == 2
    assert done.result.seed is not None and done.result.seed >= 0  # -1 became a real seed, recorded
    root = _root(rt)
    for art in done.result.artifacts:
        data = (root / art.key).read_bytes()
        assert art.key == f"jobs/{job.job_id}/{done.attempt}/{art.index}.png"
        assert hashlib.sha256(data).hexdigest() == art.sha256 and len(data) == art.size > 0
        assert Image.open(root / art.key).size == (64, 64)
    assert done.result.metadata_key == f"jobs/{job.job_id}/{done.attempt}/metadata.json"
    meta = json.loads((root / done.result.metadata_key).read_text())
    assert meta["seed"] == done.result.seed and meta["backend"] == fake.url
    assert [a["sha256"] for a in meta["artifacts"]] == [a.sha256 for a in done.result.artifacts]
    assert meta["request"]["prompt"] == "a red fox"
    assert done.durations.queue_wait is not None and done.durations.render is not None
    assert done.durations.store is not None
    # progress was streamed: status, progress (with sampler steps), artifact, done
    kinds = [e.type for e in await rt.events.history(job.job_id)]
    assert kinds[0] == "status" and kinds[-1] == "done" and kinds.count("artifact") == 2
    steps = [e.data.get("step") for e in await rt.events.history(job.job_id) if e.type == "progress"]
    assert 4 in steps and len([s for s in steps if s]) >= 2
    assert fake.prompts_posted == {done.result.prompt_id: 1}


async def test_invalid_graph_fails_once_with_node_messages(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
             "2": {"class_type": "NoSuchNode", "inputs": {"image": ["1", 0]}}}  # fmt: skip
    async with running_worker(rt):
        job = (await rt.store.submit(RawGraphRequest(workflow=graph))).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.FAILED and done.attempt == 1
    assert done.error is not None and done.error.code == "INVALID_GRAPH"
    assert "NoSuchNode" in done.error.message
    assert fake.prompts_posted == {}, "an invalid graph must not reach ComfyUI"


async def test_missing_model_lists_available_models(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url])
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="x", model="nope.safetensors", steps=1))).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.FAILED and done.attempt == 1
    assert done.error is not None and "nope.safetensors" in done.error.message
    assert "sd15-fake.safetensors" in done.error.message


async def test_cancel_running_job_interrupts_backend(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 5.0
    rt = await runtime_factory(backends=[fake.url])
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="slow", steps=10))).job
        for _ in range(200):
            cur = await rt.store.get(job.job_id)
            if cur is not None and cur.progress.phase == "rendering":
                break
            import asyncio

            await asyncio.sleep(0.02)
        assert await rt.store.cancel(job.job_id) == "requested"
        done = await wait_done(rt, job.job_id, timeout=10)
    assert done.status == JobState.CANCELED
    assert fake.interrupts, "the fake never saw the interrupt"
    assert await rt.slots.in_use(fake.url) == 0
