"""The backend pool: settings entries, health with hysteresis, one prober at a time, registrations every process
sees, routing by model / node class / label, quarantine after a device error, draining a backend that leaves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from comfyflow.core.pool import Health, backend_id, parse_backend, requirement_for
from comfyflow.core.runtime import Runtime
from comfyflow.errors import ConfigError
from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.testing import fake_exec
from tests.core.conftest import running_worker, wait_done


def _req(model: str | None = None, **kw: Any) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2, model=model, **kw)


async def _health(rt: Runtime, url: str) -> Health:
    state = (await rt.pool.view(fresh=True)).get(url)
    assert state is not None
    return state.health


@contextlib.asynccontextmanager
async def probing(rt: Runtime, name: str = "prober") -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(rt.pool.run(stop, name=name))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_settings_entries_carry_slots_and_labels() -> None:
    spec = parse_backend("http://gpu1:8188/#slots=4&labels=vram-24gb,sdxl", 2)
    assert (spec.url, spec.capacity, spec.labels) == ("http://gpu1:8188", 4, ("vram-24gb", "sdxl"))
    assert parse_backend("http://gpu2:8188", 3).capacity == 3
    for bad in ("http://g:1#slots=0", "http://g:1#slots=x", "http://g:1#gpus=2", "http://g:1#labels=a b"):
        with pytest.raises(ConfigError):
            parse_backend(bad, 2)


def test_requirement_names_classes_models_and_labels() -> None:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "alpha.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "x.safetensors", "model": ["1", 0]}},
        "3": {"class_type": "CustomThing", "inputs": {"weights": "beta.safetensors", "text": "a fox"}},
    }
    req = requirement_for(graph, job_labels=["backend:vram-24gb", "demo"], known_models=frozenset({"beta.safetensors"}))
    assert req.node_classes == {"CheckpointLoaderSimple", "LoraLoader", "CustomThing"}
    assert req.models == {("checkpoints", "alpha.safetensors"), ("loras", "x.safetensors"), (None, "beta.safetensors")}
    assert req.labels == {"vram-24gb"}


async def test_health_has_hysteresis_and_a_quarantine_needs_passes(fakes, scale_runtime) -> None:  # type: ignore[no-untyped-def]
    a = fakes["a"]
    rt = await scale_runtime(backends=[a.url])
    assert await _health(rt, a.url) is Health.UNKNOWN
    assert await rt.pool.probe(a.url) is Health.UP
    state = (await rt.pool.view(fresh=True)).get(a.url)
    assert state is not None and state.models is not None, "described when it came up"
    assert state.models["checkpoints"] == list(a.checkpoints) and "KSampler" in (state.node_classes or ())
    a.faults.refuse = True
    assert await rt.pool.probe(a.url) is Health.UP, "one failure is not enough"
    assert await rt.pool.probe(a.url) is Health.DOWN
    a.faults.refuse = False
    assert await rt.pool.probe(a.url) is Health.DOWN, "one pass is not enough"
    assert await rt.pool.probe(a.url) is Health.UP
    await rt.pool.quarantine(a.url, "CUDA error: device lost")
    assert await _health(rt, a.url) is Health.QUARANTINED
    assert await rt.pool.probe(a.url) is Health.QUARANTINED
    assert await rt.pool.probe(a.url) is Health.UP


async def test_one_process_probes_at_a_time_and_another_takes_over(fakes, scale_runtime) -> None:  # type: ignore[no-untyped-def]
    a = fakes["a"]
    rt1 = await scale_runtime(backends=[a.url], backend_probe_seconds=0.1)
    rt2 = await scale_runtime(backends=[a.url], backend_probe_seconds=0.1, key_prefix=rt1.settings.key_prefix)

    def probes() -> int:
        return sum(1 for e in a.log if e["path"] == "/system_stats")

    before = probes()
    stop1 = asyncio.Event()
    first = asyncio.create_task(rt1.pool.run(stop1, name="one"))
    await asyncio.sleep(0.05)
    async with probing(rt2, "two"):
        await asyncio.sleep(1.0)
        assert probes() - before <= 14, "one leader probes (about 10 rounds a second), not two"
        assert await rt1.redis.get(rt1.pool.leader_key) == b"one"
        stop1.set()
        await first
        await asyncio.sleep(0.4)
        assert await rt1.redis.get(rt1.pool.leader_key) == b"two", "the other process took over"


async def test_runtime_registration_is_seen_by_every_process(fakes, scale_runtime) -> None:  # type: ignore[no-untyped-def]
    a, b = fakes["a"], fakes["b"]
    api = await scale_runtime(backends=[a.url])
    worker_rt = await scale_runtime(backends=[a.url], key_prefix=api.settings.key_prefix)
    async with running_worker(worker_rt, concurrency=2):
        before = (await api.store.submit(_req("gamma.safetensors"))).job
        failed = await wait_done(api, before.job_id)
        assert failed.status == JobState.FAILED and failed.error is not None
        assert failed.error.code == "INVALID_GRAPH", failed.error
        assert "gamma.safetensors" in failed.error.message and "alpha.safetensors" in failed.error.message

        spec = await api.pool.register(b.url, capacity=3, labels=["vram-24gb"])
        assert spec.source == "runtime" and spec.capacity == 3
        job = (await api.store.submit(_req("gamma.safetensors"))).job
        done = await wait_done(api, job.job_id)
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.result is not None and done.result.backend == b.url
    assert b.url in worker_rt.backends and worker_rt.slots.capacities[b.url] == 3, "built lazily, capacity known"
    assert await api.pool.remove(b.url) == "removed"
    await asyncio.sleep(0.3)
    assert b.url not in (await worker_rt.pool.view()).backends
    assert await api.pool.remove(a.url) == "disabled", "a configured backend is disabled, not forgotten"
    state = (await api.pool.view(fresh=True)).get(a.url)
    assert state is not None and not state.spec.enabled and not state.usable


async def test_backend_labels_route_jobs(fakes, scale_runtime) -> None:  # type: ignore[no-untyped-def]
    a, c = fakes["a"], fakes["c"]
    rt = await scale_runtime(backends=[a.url, f"{c.url}#labels=vram-48gb"])
    async with running_worker(rt, concurrency=4):
        jobs = [(await rt.store.submit(_req("alpha.safetensors", labels=["backend:vram-48gb"]))).job for _ in range(4)]
        done = [await wait_done(rt, j.job_id) for j in jobs]
        other = (await rt.store.submit(_req("alpha.safetensors", labels=["backend:vram-80gb"]))).job
        refused = await wait_done(rt, other.job_id)
    assert {d.result.backend for d in done if d.result} == {c.url}
    assert refused.status == JobState.FAILED and refused.error is not None and "vram-80gb" in refused.error.message


async def test_model_only_on_a_down_backend_waits_for_it(fakes, scale_runtime) -> None:  # type: ignore[no-untyped-def]
    a, b = fakes["a"], fakes["b"]
    rt = await scale_runtime(backends=[a.url, b.url], max_attempts=8, retry_backoff_seconds=0.3)
    assert await rt.pool.probe(b.url) is Health.UP  # described: gamma lives on b
    b.faults.refuse = True
    await rt.pool.probe(b.url)
    assert await rt.pool.probe(b.url) is Health.DOWN
    async with running_worker(rt, concurrency=2):
        job = (await rt.store.submit(_req("gamma.safetensors"))).job
        for _ in range(200):
            current = await rt.store.get(job.job_id)
            if current is not None and current.attempt >= 2:
                break
            await asyncio.sleep(0.02)
        assert current is not None and current.status != JobState.FAILED, "transient, not a validation error"
        b.faults.refuse = False
        await rt.pool.probe(b.url)
        await rt.pool.probe(b.url)
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED and done.result is not None and done.result.backend == b.url


async def test_device_error_quarantines_the_backend_and_the_job_moves(fakes, scale_runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, c = fakes["a"], fakes["c"]
    original = fake_exec.node_function

    def broken_gpu_on_a(class_type: str) -> Any:
        fn = original(class_type)

        async def run(ctx: Any, inputs: Any, info: Any) -> Any:
            if ctx._run.srv is a and class_type == "KSampler":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return await fn(ctx, inputs, info)

        return run

    monkeypatch.setattr(fake_exec, "node_function", broken_gpu_on_a)
    rt = await scale_runtime(backends=[a.url, c.url])
    async with running_worker(rt, concurrency=1):
        job = (await rt.store.submit(_req("alpha.safetensors"))).job  # a is first in the pool: tried first
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.SUCCEEDED, done.error
    assert done.attempt == 2 and done.result is not None and done.result.backend == c.url
    raw = await rt.store.raw(job.job_id)
    assert '"DEVICE_ERROR"' in raw["last_error"] and a.url in raw["last_error"]
    assert await _health(rt, a.url) is Health.QUARANTINED
    monkeypatch.setattr(fake_exec, "node_function", original)
    assert await rt.pool.probe(a.url) is Health.QUARANTINED
    assert await rt.pool.probe(a.url) is Health.UP, "back after passing health checks"


async def test_a_backend_leaving_the_pool_moves_its_waiting_prompts(fakes, scale_runtime) -> None:  # type: ignore[no-untyped-def]
    a, b = fakes["a"], fakes["b"]
    a.render_time = b.render_time = 1.5
    rt = await scale_runtime(backends=[a.url, f"{b.url}#slots=1"])

    def posted() -> int:
        return len(a.prompts_posted) + len(b.prompts_posted)

    async with running_worker(rt, concurrency=3):
        ids = []
        for n in range(3):  # a (0/2) -> b (0/1 < 1/2) -> a again, waiting behind the first in a's queue
            ids.append((await rt.store.submit(_req("beta.safetensors", seed=n))).job.job_id)
            for _ in range(200):
                if posted() > n:
                    break
                await asyncio.sleep(0.01)
        assert len(a.prompts_posted) == 2 and a.state()["queue"]["pending"], "one prompt waits in a's queue"
        waiting = a.state()["queue"]["pending"][0]
        assert await rt.pool.remove(a.url) == "disabled"
        done = [await wait_done(rt, j, timeout=20) for j in ids]
    assert all(d.status == JobState.SUCCEEDED for d in done), [d.error for d in done]
    prompts = {d.job_id: (await rt.store.raw(d.job_id))["prompts"] for d in done}
    moved = next(d for d in done if waiting in prompts[d.job_id])
    assert moved.result is not None and moved.result.backend == b.url and moved.attempt == 2
    assert waiting not in a.state()["queue"]["pending"] and waiting not in (a.state()["queue"]["running"])
    first = done[0]
    assert first.result is not None and first.result.backend == a.url and first.attempt == 1, "a running one finishes"
    assert backend_id(a.url) in (await rt.pool.view()).get(a.url).public()["id"]  # type: ignore[union-attr]
