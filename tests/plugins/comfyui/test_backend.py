"""The ComfyUI backend against the fake ComfyUI over real sockets."""

import asyncio
import io
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from comfyflow.errors import (
    BackendUnavailable,
    Canceled,
    ExecutionFailed,
    GraphInvalid,
    OutOfMemory,
    OutputTooLarge,
    Stalled,
)
from comfyflow.models import Img2ImgRequest, Txt2ImgRequest
from comfyflow.plugins.comfyui.backend import ComfyUIBackend, ComfyUIBackendFactory
from comfyflow.plugins.comfyui.templates import build_graph, default_model
from comfyflow.plugins.protocols import Backend, OutputRef, PromptPhase
from comfyflow.settings import Settings
from comfyflow.testing import fake_comfyui
from comfyflow.testing.backend_contract import OutputStreamContract

FakeComfyUI = fake_comfyui.FakeComfyUI
SETTINGS = Settings(_env_file=None, object_info_ttl_seconds=60)


@pytest.fixture
async def fake(tmp_path):
    async with FakeComfyUI(render_time=0.0, workdir=tmp_path) as server:
        yield server


@pytest.fixture
async def slow_fake(tmp_path):
    async with FakeComfyUI(render_time=1.0, workdir=tmp_path) as server:
        yield server


@pytest.fixture
async def backend(fake):
    b = ComfyUIBackendFactory(fake.url, settings=SETTINGS)
    yield b
    await b.aclose()


def pid() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def txt2img(b: ComfyUIBackend, **fields) -> dict:
    caps = await b.capabilities()
    request = Txt2ImgRequest(**{"prompt": "a red fox", "steps": 3, **fields})
    return build_graph(
        request, model=request.model or default_model(caps), seed=1234, filename_prefix="t/job"
    )


class Events(list):
    async def __call__(self, event):
        self.append(event)


async def wait_for_phase(b: ComfyUIBackend, prompt_id: str, phase: PromptPhase, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while (await b.lookup(prompt_id)).phase is not phase:
        assert time.monotonic() < deadline, f"{prompt_id} never became {phase}"
        await asyncio.sleep(0.02)


async def test_factory_builds_a_backend(backend):
    assert isinstance(backend, Backend)
    assert backend.url == backend.url.rstrip("/")


async def test_capabilities_list_checkpoints_and_are_cached(backend, fake):
    caps = await backend.capabilities()
    assert caps.models["checkpoints"][:2] == ["sd15-fake.safetensors", "dreamshaper_8.safetensors"]
    assert {"KSampler", "SaveImage", "CheckpointLoaderSimple"} <= caps.node_classes
    assert await backend.capabilities() is caps
    assert await backend.capabilities(refresh=True) is not caps


async def test_render_succeeds_with_progress_events_and_fetches(backend, fake):
    graph = await txt2img(backend, batch_size=2)
    await backend.validate(graph)
    events, prompt_id = Events(), pid()
    outputs = await backend.render(graph, prompt_id, on_event=events, stall_timeout=5)
    assert len(outputs) == 2 and all(o.kind == "images" and o.type == "output" for o in outputs)
    types = [e.type for e in events]
    assert types[0] == "started" and "node" in types and "executed" in types
    progress = [e for e in events if e.type == "progress"]
    assert progress and progress[-1].node_type == "KSampler" and progress[-1].max == 3
    status = await backend.lookup(prompt_id)
    assert status.phase is PromptPhase.SUCCEEDED and status.outputs == outputs
    async with backend.open_output(outputs[0], max_bytes=10_000_000) as stream:
        data = b"".join([chunk async for chunk in stream.chunks])
    assert data.startswith(b"\x89PNG") and stream.content_type == "image/png"
    assert stream.extension == "png" and stream.size == len(data)
    with pytest.raises(OutputTooLarge):
        async with backend.open_output(outputs[0], max_bytes=10):
            pass


async def test_a_finished_prompt_is_adopted_without_posting_again(backend, fake):
    graph, prompt_id = await txt2img(backend), pid()
    first = await backend.render(graph, prompt_id, on_event=Events(), stall_timeout=5)
    again = await backend.render(graph, prompt_id, on_event=Events(), stall_timeout=5)
    assert again == first
    assert fake.prompts_posted[prompt_id] == 1


async def test_a_recovered_worker_attaches_to_the_running_prompt(slow_fake):
    first, second = ComfyUIBackend(slow_fake.url), ComfyUIBackend(slow_fake.url)
    try:
        graph, prompt_id = await txt2img(first), pid()
        task = asyncio.create_task(first.render(graph, prompt_id, on_event=Events(), stall_timeout=5))
        await wait_for_phase(first, prompt_id, PromptPhase.RUNNING)
        events = Events()
        outputs = await second.render(graph, prompt_id, on_event=events, stall_timeout=5)
        assert outputs and outputs == await task
        assert slow_fake.prompts_posted[prompt_id] == 1
        # it reconnected with the poster's client id, so ComfyUI sent the remaining frames to it
        assert any(e.type == "progress" for e in events)
    finally:
        await first.aclose()
        await second.aclose()


async def test_server_validation_error_is_graph_invalid_with_node_details(backend, fake):
    graph = await txt2img(backend)
    del graph["6"]["inputs"]["samples"]  # VAEDecode without its latent
    with pytest.raises(GraphInvalid) as info:
        await backend.render(graph, pid(), on_event=Events(), stall_timeout=5)
    nodes = info.value.details["nodes"]
    assert nodes[0]["node_id"] == "6" and nodes[0]["class_type"] == "VAEDecode"
    assert nodes[0]["errors"][0]["type"] == "required_input_missing"
    assert nodes[0]["errors"][0]["input_name"] == "samples"


async def test_local_validation_names_the_missing_model(backend):
    graph = await txt2img(backend, model="nope.safetensors")
    with pytest.raises(GraphInvalid) as info:
        await backend.validate(graph)
    assert (
        "model 'nope.safetensors' not found in checkpoints; available: sd15-fake.safetensors"
        in info.value.message
    )
    graph = await txt2img(backend)
    graph["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    with pytest.raises(GraphInvalid, match="NoSuchNode"):
        await backend.validate(graph)


async def test_http_500_is_backend_unavailable(backend, fake):
    graph = await txt2img(backend)
    fake.faults.http_500 = True
    with pytest.raises(BackendUnavailable) as info:
        await backend.render(graph, pid(), on_event=Events(), stall_timeout=5)
    assert info.value.transient and info.value.details["backend"] == fake.url


async def test_refused_connections_are_backend_unavailable(backend, fake):
    graph = await txt2img(backend)
    fake.faults.refuse = True
    with pytest.raises(BackendUnavailable):
        await backend.render(graph, pid(), on_event=Events(), stall_timeout=5)
    health = await backend.health()
    assert not health.ok and health.detail


async def test_a_closed_port_is_backend_unavailable():
    b = ComfyUIBackend("http://127.0.0.1:9")
    try:
        with pytest.raises(BackendUnavailable):
            await b.lookup("x")
        assert not (await b.health()).ok
    finally:
        await b.aclose()


async def test_a_hung_prompt_stalls_and_is_interrupted(backend, fake):
    graph, prompt_id = await txt2img(backend), pid()
    fake.faults.hang = True
    started = time.monotonic()
    with pytest.raises(Stalled):
        await backend.render(graph, prompt_id, on_event=Events(), stall_timeout=0.5)
    assert time.monotonic() - started < 3
    assert prompt_id in str(fake.interrupts)


async def test_a_dropped_socket_still_succeeds_through_history(backend, fake):
    graph = await txt2img(backend)
    fake.faults.drop_socket = True
    outputs = await backend.render(graph, pid(), on_event=Events(), stall_timeout=5)
    assert outputs


async def test_out_of_memory_is_classified(backend, fake):
    graph = await txt2img(backend)
    fake.faults.oom = True
    with pytest.raises(OutOfMemory) as info:
        await backend.render(graph, pid(), on_event=Events(), stall_timeout=5)
    assert info.value.transient and info.value.details.get("node_id")
    await backend.free()


async def test_cancel_a_pending_and_a_running_prompt(slow_fake):
    b = ComfyUIBackend(slow_fake.url)
    try:
        graph = await txt2img(b)
        other = await txt2img(b, prompt="something else")
        running, pending = pid(), pid()
        first = asyncio.create_task(b.render(graph, running, on_event=Events(), stall_timeout=5))
        await wait_for_phase(b, running, PromptPhase.RUNNING)
        second = asyncio.create_task(b.render(other, pending, on_event=Events(), stall_timeout=5))
        await wait_for_phase(b, pending, PromptPhase.PENDING)
        await b.cancel(pending)
        with pytest.raises(Canceled):
            await asyncio.wait_for(second, 5)
        assert (await b.lookup(pending)).phase is PromptPhase.UNKNOWN
        await b.cancel(running)
        with pytest.raises(Canceled):
            await asyncio.wait_for(first, 5)
        assert running in str(slow_fake.interrupts)
        await b.cancel(running)  # idempotent
    finally:
        await b.aclose()


async def test_upload_then_img2img(backend, fake):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    name = await backend.upload_image(buf.getvalue(), "../in put.png")
    assert "/" not in name.replace("\\", "/").split("/")[-1] and ".." not in name
    caps = await backend.capabilities()
    request = Img2ImgRequest(prompt="x", init_image="upload1234", denoise=0.5, width=64, height=64, steps=2)
    graph = build_graph(request, model=default_model(caps), seed=5, filename_prefix="t/i2i", input_image=name)
    await backend.validate(graph)
    outputs = await backend.render(graph, pid(), on_event=Events(), stall_timeout=5)
    assert outputs
    async with backend.open_output(outputs[0], max_bytes=10_000_000) as stream:
        assert stream.extension == "png"


async def test_health_and_lookup_of_an_unknown_prompt(backend, fake):
    health = await backend.health()
    assert health.ok and health.queue_remaining == 0 and health.latency_s >= 0
    assert (await backend.lookup("never-posted")).phase is PromptPhase.UNKNOWN


async def test_a_failing_node_is_execution_failed_with_details(backend, fake):
    graph = await txt2img(backend)
    fake.faults.fail_node_types = {"VAEDecode"}
    with pytest.raises(ExecutionFailed) as info:
        await backend.render(graph, pid(), on_event=Events(), stall_timeout=5)
    assert not isinstance(info.value, OutOfMemory)
    details = info.value.details
    assert details["node_id"] == "6" and details["node_type"] == "VAEDecode"
    assert details["exception_type"] and "node 6 (VAEDecode) failed" in info.value.message


async def test_waiting_behind_another_prompt_is_not_a_stall(slow_fake):
    b = ComfyUIBackend(slow_fake.url)
    try:
        first = asyncio.create_task(b.render(await txt2img(b), pid(), on_event=Events(), stall_timeout=5))
        second_pid = pid()
        events = Events()
        second = asyncio.create_task(
            b.render(await txt2img(b, prompt="another"), second_pid, on_event=events, stall_timeout=0.8)
        )
        await wait_for_phase(b, second_pid, PromptPhase.PENDING)
        assert await asyncio.wait_for(first, 5) and await asyncio.wait_for(second, 5)
        assert second_pid not in str(slow_fake.interrupts)
        assert any(e.type == "progress" for e in events)
    finally:
        await b.aclose()


class TestComfyUIOutputStreams(OutputStreamContract):
    """The output-streaming contract for the ComfyUI backend, against the fake's ``/view`` (a real socket)."""

    @pytest.fixture
    def serve_output(self, fake):
        def serve(name: str, data: bytes) -> OutputRef:
            (Path(fake.dirs.output) / name).write_bytes(data)
            return OutputRef("9", "gifs", name)

        return serve
