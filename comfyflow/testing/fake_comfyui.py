"""A protocol-faithful fake ComfyUI 0.8.0 server for tests, benchmarks and ``comfyflow sim``.

It speaks the HTTP + WebSocket protocol captured from a real server (``PROTOCOL.md``), quirks included:
synchronous validation with ComfyUI's error shapes, heap-ordered ``/queue``, the classic one-prompt output
cache, execution frames only for the submitting ``client_id``, history written before the final
``executing {node: null}``. Nodes are simulated (no models); ``SaveImage`` writes real PNGs.

Fault switches (``FakeComfyUI.faults``, or ``POST /_fake/faults`` from another process) make it refuse
connections, answer 500, hang, drop WebSockets, run slowly, run out of memory or fail chosen node types.

Run standalone: ``python -m comfyflow.testing.fake_comfyui --port 8188 --render-time 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import ipaddress
import itertools
import json
import logging
import shutil
import signal
import socket
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from comfyflow.testing.fake_exec import Executor, QueueItem, RunResult
from comfyflow.testing.fake_files import MAX_UPLOAD_SIZE, SERVER_FEATURES, FileAndInfoRoutes, empty
from comfyflow.testing.fake_graph import NodeCatalog, Validator
from comfyflow.testing.fake_nodes import Dirs

__all__ = ["FakeComfyUI", "Faults", "main", "run"]

log = logging.getLogger("comfyflow.testing.fake_comfyui")

DEFAULT_CHECKPOINTS = ("sd15-fake.safetensors", "dreamshaper_8.safetensors")
MAX_HISTORY = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
TEXT_500 = "500 Internal Server Error\n\nServer got itself in trouble"
#: Added by ComfyUI (with --disable-api-nodes, as captured) to every response its handlers produce.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; "
    "frame-src 'self'; object-src 'self';"
)
_DROP = object()
_PROMPT_ID = web.RequestKey("prompt_id", str)


BAD_OUTPUTS = frozenset({"", "truncated", "magic", "bomb"})


@dataclass
class Faults:
    """Fault switches. Assigning a field takes effect at once (``refuse`` stops/starts the listener)."""

    refuse: bool = False
    http_500: bool = False
    hang: bool = False
    drop_socket: bool = False
    slow: float = 1.0
    oom: bool = False
    fail_node_types: set[str] = field(default_factory=set)
    #: Seconds every HTTP answer (not the WebSocket) is late.
    delay: float = 0.0
    #: Corrupt the PNGs ``/view`` serves: "truncated", "magic" (wrong magic bytes) or "bomb" (a decompression bomb).
    bad_output: str = ""

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        listener = self.__dict__.get("_listener")
        if listener is not None and not name.startswith("_"):
            listener(name, value)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fail_node_types"] = sorted(self.fail_node_types)
        return out

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from JSON-ish values (validated; ``fail_node_types`` takes a list)."""
        known = {f.name for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {sorted(known)}")
            if name in ("slow", "delay"):
                clean[name] = float(value)
            elif name == "fail_node_types":
                if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                    raise ValueError("fail_node_types must be a list of node class names")
                clean[name] = set(value)
            elif name == "bad_output":
                if value not in BAD_OUTPUTS:
                    raise ValueError(f"bad_output must be one of {sorted(BAD_OUTPUTS)}")
                clean[name] = value
            elif isinstance(value, bool):
                clean[name] = value
            else:
                raise ValueError(f"fault {name!r} must be a boolean")
        for name, value in clean.items():
            setattr(self, name, value)

    def clear(self) -> None:
        defaults = Faults()
        self.update({f.name: getattr(defaults, f.name) for f in fields(self)})


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FakeComfyUI(FileAndInfoRoutes):
    """One fake ComfyUI server on a real loopback TCP port. Use ``async with FakeComfyUI() as fake:``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        render_time: float = 0.0,
        checkpoints: Sequence[str] = DEFAULT_CHECKPOINTS,
        workdir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.render_time = float(render_time)
        self.checkpoints = list(checkpoints)
        self.url = ""
        self.faults = Faults()
        self.log: list[dict[str, Any]] = []
        self.prompts_posted: dict[str, int] = {}
        self.max_in_flight = 0
        self.interrupts: list[str | None] = []
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fake-comfyui-"))
        )
        self.dirs = Dirs(self.workdir)
        self.catalog = NodeCatalog(self.checkpoints)
        self.validator = Validator(self.catalog, self._image_exists)
        self.executor = Executor(self, self.dirs)
        # server state (names mirror ComfyUI's PromptServer / PromptQueue)
        self.running = False
        self.interrupt_flag = False
        self.current_client_id: str | None = None
        self.last_node_id: str | None = None
        self._number = 0
        self._seq = itertools.count()
        self._queue: list[QueueItem] = []
        self._in_progress: dict[int, QueueItem] = {}
        self._history: dict[str, dict[str, Any]] = {}
        self._flags: dict[str, Any] = {}
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._ws_all: dict[web.WebSocketResponse, Any] = {}
        self._messages: asyncio.Queue[Any] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self._relisten: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._messages = asyncio.Queue()
        self._wake = asyncio.Event()
        self._runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = self._bind()
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self.running = True
        if not self.faults.refuse:
            self._server = await self._loop.create_server(self._runner.server, sock=sock)  # type: ignore[arg-type]
        else:
            sock.close()
        self._tasks = [
            self._loop.create_task(self._worker(), name="fake-comfyui-worker"),
            self._loop.create_task(self._publisher(), name="fake-comfyui-publisher"),
        ]
        object.__setattr__(self.faults, "_listener", self._on_fault_change)

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        object.__setattr__(self.faults, "_listener", None)
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._relisten is not None:
            await asyncio.gather(self._relisten, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._ws_all:
            closing = [asyncio.wait_for(ws.close(code=1001), 0.5) for ws in list(self._ws_all)]
            await asyncio.gather(*closing, return_exceptions=True)
            self._abort_sockets()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> FakeComfyUI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def _on_fault_change(self, name: str, value: Any) -> None:
        if name != "refuse" or self._loop is None:
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is self._loop:
            self._apply_refuse(bool(value))
        else:
            self._loop.call_soon_threadsafe(self._apply_refuse, bool(value))

    def _apply_refuse(self, refuse: bool) -> None:
        if not self.running or self._loop is None or self._runner is None:
            return
        if refuse:
            if self._server is not None:
                self._server.close()
                self._server = None
            self._abort_sockets()
        elif self._server is None and (self._relisten is None or self._relisten.done()):
            sock = self._bind()  # listening right away: connections wait in the backlog until served

            async def serve() -> None:
                assert self._loop is not None and self._runner is not None
                server = await self._loop.create_server(self._runner.server, sock=sock)  # type: ignore[arg-type]
                if self.faults.refuse or not self.running:
                    server.close()
                else:
                    self._server = server

            self._relisten = self._loop.create_task(serve())

    def _abort_sockets(self) -> None:
        for ws, transport in list(self._ws_all.items()):
            if transport is not None:
                transport.abort()
            self._ws_all.pop(ws, None)

    # -- messages ------------------------------------------------------------------------------------
    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Queue one text frame; ``sid=None`` broadcasts to every registered socket."""
        if self._messages is not None:
            self._messages.put_nowait((json.dumps({"type": event, "data": data}), sid))

    def drop_sockets_soon(self) -> None:
        if self._messages is not None:
            self._messages.put_nowait(_DROP)

    async def _publisher(self) -> None:
        assert self._messages is not None
        while True:
            msg = await self._messages.get()
            if msg is _DROP:
                self._abort_sockets()
                continue
            text, sid = msg
            if sid is None:
                targets = list(self._sockets.values())
            else:
                ws = self._sockets.get(sid)
                targets = [ws] if ws is not None else []
            for ws in targets:
                try:
                    await ws.send_str(text)
                except Exception:  # a socket that went away; ComfyUI logs and carries on
                    pass

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self._queue) + len(self._in_progress)}}

    def _queue_updated(self) -> None:
        self.send("status", {"status": self._queue_info()})

    # -- worker --------------------------------------------------------------------------------------
    def _apply_flags(self) -> None:
        flags, self._flags = self._flags, {}
        if flags.get("free_memory"):
            self.executor.reset()

    async def _worker(self) -> None:
        assert self._wake is not None
        while True:
            while not self._queue:
                self._apply_flags()
                self._wake.clear()
                await self._wake.wait()
            self._apply_flags()
            item = heapq.heappop(self._queue)
            task_id = next(self._seq)
            self._in_progress[task_id] = item
            self._queue_updated()
            try:
                result = await self.executor.run(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fake ComfyUI: prompt %s crashed", item.prompt_id)
                result = RunResult(success=False)
            self._in_progress.pop(task_id, None)
            if len(self._history) > MAX_HISTORY:
                self._history.pop(next(iter(self._history)))
            self._history[item.prompt_id] = {
                "prompt": item.as_list(),
                "outputs": result.outputs,
                "status": {
                    "status_str": "success" if result.success else "error",
                    "completed": result.success,
                    "messages": result.messages,
                },
                "meta": result.meta,
            }
            self._queue_updated()
            if item.client_id is not None:
                self.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id)

    def _put(self, item: QueueItem) -> None:
        heapq.heappush(self._queue, item)
        self.max_in_flight = max(self.max_in_flight, len(self._queue) + len(self._in_progress))
        self._queue_updated()
        if self._wake is not None:
            self._wake.set()

    def _image_exists(self, name: Any) -> bool:
        return self.dirs.exists_annotated(name)

    # -- HTTP ----------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_UPLOAD_SIZE,
            middlewares=[self._mw_log, self._mw_faults, self._mw_origin, self._mw_csp],
        )
        routes = [
            ("GET", "/ws", self._ws),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/free", self._post_free),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("GET", "/models", self._models),
            ("GET", "/models/{folder}", self._models_folder),
            ("GET", "/embeddings", self._embeddings),
            ("GET", "/extensions", self._embeddings),
        ]
        for method, path, handler in routes:
            for prefix in ("", "/api"):
                if method == "GET":
                    app.router.add_get(prefix + path, handler)  # also answers HEAD, like ComfyUI's routes.get
                else:
                    app.router.add_route(method, prefix + path, handler)
        app.router.add_get("/", self._index)
        app.router.add_post("/_fake/faults", self._fake_faults)
        app.router.add_get("/_fake/state", self._fake_state)
        return app

    @web.middleware
    async def _mw_log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        entry: dict[str, Any] = {"t": time.monotonic(), "method": request.method, "path": request.path}
        self.log.append(entry)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404 or (exc.status == 405 and request.method in ("GET", "HEAD")):
                resp = empty(404)  # ComfyUI's static catch-all answers unknown paths with an empty 404
            elif exc.status == 405:
                resp = empty(405)
            else:
                raise
        except Exception:
            # What aiohttp answers for an unhandled exception (ComfyUI's "500 ..."), minus the log spam.
            log.debug("fake ComfyUI: %s %s failed", request.method, request.path, exc_info=True)
            resp = web.Response(status=500, text=TEXT_500)
            resp.force_close()
        entry["status"] = resp.status
        if _PROMPT_ID in request:
            entry["prompt_id"] = request[_PROMPT_ID]
        return resp

    @web.middleware
    async def _mw_faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.faults.refuse:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("fake ComfyUI refuses connections")
        if self.faults.delay > 0 and request.path != "/ws":  # a slow server: every HTTP answer comes late
            await asyncio.sleep(self.faults.delay)
        return await handler(request)

    @web.middleware
    async def _mw_origin(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # ComfyUI's origin_only_middleware: a loopback Host with a different Origin is refused.
        if "Host" in request.headers and "Origin" in request.headers:
            host_domain = request.headers["Host"].lower()
            parsed = urllib.parse.urlparse(request.headers["Origin"])
            origin_domain: str | None = parsed.netloc.lower()
            host_parsed = urllib.parse.urlsplit("//" + host_domain)
            loopback = _is_loopback(host_parsed.hostname)
            host_cmp: str | None = host_domain
            if parsed.port is None:
                host_cmp = host_parsed.hostname
            if host_parsed.port is None:
                origin_domain = parsed.hostname
            if loopback and host_cmp and origin_domain and host_cmp != origin_domain:
                return empty(403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    @web.middleware
    async def _mw_csp(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        if not resp.prepared:
            resp.headers.setdefault("Content-Security-Policy", CSP)
        return resp

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="<!doctype html><title>ComfyUI (fake)</title>", content_type="text/html")

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_UPLOAD_SIZE)
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        if sid:
            self._sockets.pop(sid, None)  # re-point the id; the old socket stays open but goes silent
        else:
            sid = uuid.uuid4().hex
        self._sockets[sid] = ws
        self._ws_all[ws] = request.transport
        try:
            await ws.send_json({"type": "status", "data": {"status": self._queue_info(), "sid": sid}})
            if self.current_client_id == sid and self.last_node_id is not None:
                await ws.send_json({"type": "executing", "data": {"node": self.last_node_id}})
            first_message = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    if first_message and data.get("type") == "feature_flags":
                        await ws.send_json({"type": "feature_flags", "data": SERVER_FEATURES})
                    first_message = False
                except Exception:  # ComfyUI logs junk client frames and keeps the socket open
                    pass
        finally:
            # ComfyUI pops by id: an old socket closing after a reconnect unregisters the new one too.
            self._sockets.pop(sid, None)
            self._ws_all.pop(ws, None)
        return ws

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        if self.faults.http_500:
            resp = web.Response(status=500, text=TEXT_500)
            resp.force_close()
            return resp
        json_data = await request.json()
        if "number" in json_data:
            number = float(json_data["number"])
        else:
            number = self._number
            if json_data.get("front"):
                number = -number
            self._number += 1
        if "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        partial = json_data.get("partial_execution_targets")
        valid = self.validator.validate_prompt(prompt, partial)
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid[0]:
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        extra_data["create_time"] = int(time.time() * 1000)
        self._put(QueueItem(number, prompt_id, prompt, extra_data, valid[2], next(self._seq)))
        self.prompts_posted[prompt_id] = self.prompts_posted.get(prompt_id, 0) + 1
        request[_PROMPT_ID] = prompt_id
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})

    async def _get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._queue_info())

    async def _get_queue(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "queue_running": [item.as_list() for item in self._in_progress.values()],
                "queue_pending": [item.as_list() for item in self._queue],
            }
        )

    async def _post_queue(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if json_data.get("clear"):
            self._queue = []
            self._queue_updated()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                for i, item in enumerate(self._queue):
                    if item.prompt_id == id_to_delete:
                        if len(self._queue) == 1:
                            self._queue = []
                            self._queue_updated()
                        else:
                            self._queue.pop(i)
                            heapq.heapify(self._queue)
                        self._queue_updated()
                        break
        return web.Response()

    async def _post_interrupt(self, request: web.Request) -> web.StreamResponse:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        if prompt_id:
            self.interrupts.append(prompt_id)
            request[_PROMPT_ID] = prompt_id
            if any(item.prompt_id == prompt_id for item in self._in_progress.values()):
                self.interrupt_flag = True
        else:
            self.interrupts.append(None)
            self.interrupt_flag = True
        return web.Response()

    async def _post_free(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        unload_models = json_data.get("unload_models", False)
        free_memory = json_data.get("free_memory", False)
        if unload_models:
            self._flags["unload_models"] = unload_models
        if free_memory:
            self._flags["free_memory"] = free_memory
        if self._wake is not None and not self._in_progress:
            self._wake.set()
        return web.Response()

    async def _get_history(self, request: web.Request) -> web.StreamResponse:
        max_items_q = request.query.get("max_items")
        max_items = int(max_items_q) if max_items_q is not None else None
        offset_q = request.query.get("offset")
        offset = int(offset_q) if offset_q is not None else -1
        if offset < 0 and max_items is not None:
            offset = len(self._history) - max_items
        out: dict[str, Any] = {}
        for i, key in enumerate(self._history):
            if i >= offset:
                out[key] = self._history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return web.json_response(out)

    async def _get_history_item(self, request: web.Request) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        request[_PROMPT_ID] = prompt_id
        entry = self._history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if json_data.get("clear"):
            self._history.clear()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                self._history.pop(id_to_delete, None)
        return web.Response()

    # -- control surface -----------------------------------------------------------------------------
    async def _fake_faults(self, request: web.Request) -> web.StreamResponse:
        """``POST /_fake/faults {field: value, ..., "duration": s?}``; ``duration`` reverts them later."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            duration = body.pop("duration", None)
            previous = {k: v for k, v in self.faults.to_dict().items() if k in body}
            self.faults.update(body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if duration is not None and self._loop is not None:
            self._timers.append(self._loop.call_later(float(duration), self.faults.update, previous))
        return web.json_response(self.faults.to_dict())

    async def _fake_state(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.state())

    def state(self) -> dict[str, Any]:
        return {
            "prompts_posted": dict(self.prompts_posted),
            "max_in_flight": self.max_in_flight,
            "interrupts": list(self.interrupts),
            "faults": self.faults.to_dict(),
            "queue": {
                "running": [item.prompt_id for item in self._in_progress.values()],
                "pending": [item.prompt_id for item in sorted(self._queue)],
            },
            "history": len(self._history),
        }


def run(
    host: str, port: int, render_time: float, checkpoints: Sequence[str] | None = None, workdir: Path | None = None
) -> None:
    """Serve a fake ComfyUI until SIGINT/SIGTERM (``comfyflow sim``). ``workdir``: its input/output folders (kept);
    else a temporary folder, removed when it stops (a thread that dies with its process never stops: give it one)."""

    async def serve() -> None:
        fake = FakeComfyUI(
            host=host,
            port=port,
            render_time=render_time,
            checkpoints=tuple(checkpoints or DEFAULT_CHECKPOINTS),
            workdir=workdir,
        )
        await fake.start()
        print(f"fake ComfyUI 0.8.0 listening on {fake.url} (render time {render_time}s)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await stop.wait()
        finally:
            await fake.stop()

    asyncio.run(serve())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m comfyflow.testing.fake_comfyui", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--render-time", type=float, default=0.0, help="seconds per prompt's sampling")
    parser.add_argument("--checkpoint", action="append", dest="checkpoints", help="repeat for several")
    args = parser.parse_args(argv)
    run(args.host, args.port, args.render_time, args.checkpoints)


if __name__ == "__main__":
    main()
