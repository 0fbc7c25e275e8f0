"""Protocol corners a general fake rarely plays, against a tiny scripted ComfyUI stub on a real socket."""

import asyncio
import json
import struct

import pytest
from aiohttp import web

from comfyflow.errors import BackendUnavailable, GraphInvalid, NoOutputs, OutputTooLarge
from comfyflow.plugins.comfyui import client as client_module
from comfyflow.plugins.comfyui import render as render_module
from comfyflow.plugins.comfyui.backend import ComfyUIBackend
from comfyflow.plugins.protocols import OutputRef, PromptPhase

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}
IMAGES = {"3": {"images": [{"filename": "x_00001_.png", "subfolder": "", "type": "output"}]}}


def entry(status_str="success", outputs=None, messages=()):
    return {
        "outputs": IMAGES if outputs is None else outputs,
        "meta": {},
        "status": {
            "status_str": status_str,
            "completed": status_str == "success",
            "messages": list(messages),
        },
    }


class Stub:
    """Scripted ComfyUI: ``on_prompt(stub, body)`` decides what a POST /prompt does."""

    def __init__(self, on_prompt):
        self.on_prompt = on_prompt
        self.history: dict = {}
        self.running: list = []
        self.pending: list = []
        self.sockets: dict = {}
        self.requests: list = []
        self.headers: list = []
        self.view_body: list[bytes] = [b"0123456789"] * 3
        self.view_length = False
        self.view_cut = False
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/prompt", self.prompt)
        app.router.add_get("/history/{pid}", self.get_history)
        app.router.add_post("/history", self.post_any)
        app.router.add_get("/queue", self.queue)
        app.router.add_post("/queue", self.post_any)
        app.router.add_post("/interrupt", self.post_any)
        app.router.add_get("/view", self.view)
        self.runner = web.AppRunner(app)

    async def start(self):
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def ws(self, request):
        self.headers.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets[request.query["clientId"]] = ws
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}})
        async for _ in ws:
            pass
        return ws

    async def prompt(self, request):
        self.headers.append(dict(request.headers))
        body = await request.json()
        self.requests.append(("POST", "/prompt", body))
        status, answer = await self.on_prompt(self, body)
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)

    async def get_history(self, request):
        pid = request.match_info["pid"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def queue(self, request):
        return web.json_response({"queue_running": self.running, "queue_pending": self.pending})

    async def post_any(self, request):
        self.headers.append(dict(request.headers))
        body = await request.json()
        self.requests.append(("POST", request.path, body))
        if request.path == "/history":
            for pid in body.get("delete", []):
                self.history.pop(pid, None)
        return web.Response()

    async def view(self, request):  # chunked unless view_length: no Content-Length to check up front
        self.requests.append(("GET", "/view", dict(request.query)))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        total = sum(len(part) for part in self.view_body)
        if self.view_length:
            resp.content_length = total
        await resp.prepare(request)
        for part in self.view_body:
            await resp.write(part[:-10] if self.view_cut else part)
        if self.view_cut:
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    async def send(self, body, kind, **data):
        await self.sockets[body["client_id"]].send_json({"type": kind, "data": data})


@pytest.fixture
async def make():
    made = []

    async def factory(on_prompt):
        stub = Stub(on_prompt)
        await stub.start()
        backend = ComfyUIBackend(stub.url)
        made.append((stub, backend))
        return stub, backend

    yield factory
    for stub, backend in made:
        await backend.aclose()
        await stub.runner.cleanup()


class Events(list):
    async def __call__(self, event):
        self.append(event)


async def test_partly_valid_prompt_is_rejected_and_removed(make):
    async def on_prompt(stub, body):
        return 200, {
            "prompt_id": body["prompt_id"],
            "number": 17,
            "node_errors": {
                "4": {
                    "errors": [
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": "image",
                            "extra_info": {"input_name": "image"},
                        }
                    ],
                    "dependent_outputs": ["5"],
                    "class_type": "ImageInvert",
                }
            },
        }

    stub, backend = await make(on_prompt)
    with pytest.raises(GraphInvalid, match="drop some outputs") as info:
        await backend.render(GRAPH, "p1", on_event=Events(), stall_timeout=5)
    assert info.value.details["nodes"][0]["node_id"] == "4"
    posted = [(path, body) for _, path, body in stub.requests]
    assert ("/queue", {"delete": ["p1"]}) in posted
    assert ("/interrupt", {"prompt_id": "p1"}) in posted
    assert ("/history", {"delete": ["p1"]}) in posted


async def test_socket_opens_before_the_post_and_no_origin_is_sent(make):
    async def on_prompt(stub, body):
        assert body["client_id"] in stub.sockets, "POST /prompt came before the socket"
        assert body["prompt_id"] == "p2" and body["prompt"] == GRAPH
        pid = body["prompt_id"]
        await stub.sockets[body["client_id"]].send_bytes(struct.pack(">II", 1, 2) + b"\x89PNG....")
        await stub.send(body, "progress", value=1, max=2, prompt_id="someone-else", node="1")
        await stub.send(body, "execution_start", prompt_id=pid, timestamp=1)
        await stub.send(body, "progress", value=1, max=2, prompt_id=pid, node="1")
        await stub.sockets[body["client_id"]].send_bytes(struct.pack(">II", 3, 1) + b"1text")
        stub.history[pid] = entry()
        await stub.send(body, "executing", node=None, prompt_id=pid)
        return 200, {"prompt_id": pid, "number": 1, "node_errors": {}}

    stub, backend = await make(on_prompt)
    events = Events()
    outputs = await backend.render(GRAPH, "p2", on_event=events, stall_timeout=5)
    assert [o.filename for o in outputs] == ["x_00001_.png"]
    assert [(e.type, e.node, e.value) for e in events] == [("started", None, None), ("progress", "1", 1)]
    assert all("Origin" not in h for h in stub.headers)


async def test_500_text_is_backend_unavailable(make):
    async def on_prompt(stub, body):
        return 500, "500 Internal Server Error\n\nServer got itself in trouble"

    _, backend = await make(on_prompt)
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        await backend.render(GRAPH, "p3", on_event=Events(), stall_timeout=5)


async def test_someone_elses_interrupt_is_transient(make):
    async def on_prompt(stub, body):
        pid = body["prompt_id"]
        stub.history[pid] = entry(
            "error",
            {},
            [
                [
                    "execution_interrupted",
                    {"prompt_id": pid, "node_id": "1", "node_type": "EmptyImage", "executed": []},
                ]
            ],
        )
        await stub.send(body, "execution_interrupted", prompt_id=pid, node_id="1")
        return 200, {"prompt_id": pid, "number": 1, "node_errors": {}}

    _, backend = await make(on_prompt)
    with pytest.raises(BackendUnavailable, match="interrupted") as info:
        await backend.render(GRAPH, "p4", on_event=Events(), stall_timeout=5)
    assert info.value.details["node_type"] == "EmptyImage"


async def test_waiting_behind_others_is_not_a_stall_and_dropped_socket_is_survived(make):
    async def finish_later(stub, pid):
        await asyncio.sleep(0.8)  # pending, silent, far beyond the stall timeout
        stub.pending.clear()
        stub.running[:] = [[1, pid, {}, {}, ["3"]]]
        for ws in list(stub.sockets.values()):
            await ws.close()  # the socket drops while it runs
        await asyncio.sleep(0.1)
        stub.running.clear()
        stub.history[pid] = entry()

    async def on_prompt(stub, body):
        stub.pending.append([1, body["prompt_id"], {}, {"client_id": body["client_id"]}, ["3"]])
        stub.task = asyncio.create_task(finish_later(stub, body["prompt_id"]))
        return 200, {"prompt_id": body["prompt_id"], "number": 1, "node_errors": {}}

    _, backend = await make(on_prompt)
    outputs = await backend.render(GRAPH, "p5", on_event=Events(), stall_timeout=0.3)
    assert outputs


async def test_a_prompt_that_vanishes_is_backend_unavailable(make, monkeypatch):
    monkeypatch.setattr(render_module, "VANISH_GRACE", 0.2)

    async def on_prompt(stub, body):  # accepted, then neither queued nor in history (a restart, a clear)
        return 200, {"prompt_id": body["prompt_id"], "number": 1, "node_errors": {}}

    _, backend = await make(on_prompt)
    with pytest.raises(BackendUnavailable, match="disappeared"):
        await backend.render(GRAPH, "p6", on_event=Events(), stall_timeout=0.8)


async def test_a_failed_previous_attempt_is_forgotten_then_rerun(make):
    async def on_prompt(stub, body):
        pid = body["prompt_id"]
        assert ("POST", "/history", {"delete": [pid]}) in stub.requests
        stub.history[pid] = entry()
        await stub.send(body, "executing", node=None, prompt_id=pid)
        return 200, {"prompt_id": pid, "number": 2, "node_errors": {}}

    stub, backend = await make(on_prompt)
    stub.history["p7"] = entry("error", {}, [["execution_error", {"node_id": "1", "exception_type": "X"}]])
    assert (await backend.lookup("p7")).phase is PromptPhase.FAILED
    outputs = await backend.render(GRAPH, "p7", on_event=Events(), stall_timeout=5)
    assert outputs


async def test_success_without_files_is_no_outputs(make):
    async def on_prompt(stub, body):
        stub.history[body["prompt_id"]] = entry(outputs={})
        return 200, {"prompt_id": body["prompt_id"], "number": 1, "node_errors": {}}

    _, backend = await make(on_prompt)
    with pytest.raises(NoOutputs):
        await backend.render(GRAPH, "p8", on_event=Events(), stall_timeout=1)


def test_stub_entries_are_json():
    json.dumps(entry())


async def read_output(backend, ref, max_bytes):
    """Every chunk of one output, and the stream's description."""
    async with backend.open_output(ref, max_bytes=max_bytes) as stream:
        chunks = [chunk async for chunk in stream.chunks]
    return stream, chunks


async def no_prompt(stub, body):
    """The stub's prompt handler for tests that only read outputs."""
    raise AssertionError("not used")


async def test_output_streams_with_a_cap_and_guesses_the_type(make):
    stub, backend = await make(no_prompt)
    ref = OutputRef("9", "videos", "clip_00001_.webm", "sub", "output")
    with pytest.raises(OutputTooLarge):
        await read_output(backend, ref, 25)
    stream, chunks = await read_output(backend, ref, 30)
    assert b"".join(chunks) == b"0123456789" * 3
    assert (stream.content_type, stream.extension, stream.size) == ("video/webm", "webm", None)
    assert stub.requests[-1] == (
        "GET",
        "/view",
        {"filename": "clip_00001_.webm", "subfolder": "sub", "type": "output"},
    )


async def test_an_output_without_a_length_is_cut_off_at_the_cap_mid_stream(make):
    """No Content-Length to refuse up front: the backend stops reading once more than the cap arrived, and never
    hands out a chunk bigger than CHUNK."""
    stub, backend = await make(no_prompt)
    stub.view_body = [b"x" * 65536] * 256  # 16 MiB, chunked
    cap = 3 * 1024 * 1024 + 5
    received = []
    with pytest.raises(OutputTooLarge, match="COMFYFLOW_MAX_OUTPUT_BYTES") as caught:
        async with backend.open_output(OutputRef("9", "gifs", "big.mp4"), max_bytes=cap) as stream:
            async for chunk in stream.chunks:
                received.append(len(chunk))
    assert sum(received) <= cap < sum(received) + client_module.CHUNK
    assert max(received) <= client_module.CHUNK
    assert caught.value.details["max_bytes"] == cap


async def test_an_output_announced_too_large_is_refused_before_its_body(make):
    stub, backend = await make(no_prompt)
    stub.view_length = True
    stub.view_body = [b"y" * 1000]
    with pytest.raises(OutputTooLarge) as caught:
        async with backend.open_output(OutputRef("9", "images", "a.png"), max_bytes=999):
            raise AssertionError("entered although Content-Length is over the cap")
    assert caught.value.details["size_at_least"] == 1000


async def test_a_cut_off_output_is_backend_unavailable(make):
    stub, backend = await make(no_prompt)
    stub.view_length = True
    stub.view_body = [b"z" * 1000]
    stub.view_cut = True  # announces 1000 bytes, sends 1000 - 10, closes
    with pytest.raises(BackendUnavailable):
        await read_output(backend, OutputRef("9", "images", "a.png"), 10_000)


async def test_what_the_caller_raises_while_reading_is_not_blamed_on_the_backend(make):
    _, backend = await make(no_prompt)
    with pytest.raises(OSError, match="disk full"):
        async with backend.open_output(OutputRef("9", "images", "a.png"), max_bytes=100) as stream:
            async for _ in stream.chunks:
                raise OSError(28, "disk full")
