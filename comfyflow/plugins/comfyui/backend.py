"""The built-in render backend: one ComfyUI server, talked to as it really behaves (DESIGN.md decision 3).

``ComfyUIBackendFactory`` is what the ``comfyflow.backends`` entry point ``comfyui`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import aiohttp

from comfyflow.errors import BackendUnavailable, Canceled
from comfyflow.plugins.protocols import (
    BackendHealth,
    Capabilities,
    OnEvent,
    OutputRef,
    OutputStream,
    PromptPhase,
    PromptStatus,
)
from comfyflow.settings import Settings

from .client import ComfyUIClient
from .outputs import content_type_for, failure, file_extension, find_in_queue, parse_history_entry
from .render import Socket, Watch, outputs_or_raise
from .validate import capabilities_from_object_info, check_graph, graph_invalid, rejected_by_server

HEALTH_TIMEOUT = 5.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_REMEMBERED_CANCELS = 1000


class ComfyUIBackend:
    """A ComfyUI server at ``url``. Create one per process and share it; close it with ``aclose``."""

    def __init__(self, url: str, *, settings: Settings | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = ComfyUIClient(self.url)
        self._ttl = settings.object_info_ttl_seconds if settings is not None else 300.0
        self._object_info: dict[str, Any] | None = None
        self._capabilities: Capabilities | None = None
        self._fetched_at = 0.0
        self._info_lock = asyncio.Lock()
        self._canceled: dict[str, None] = {}  # prompt ids we asked to cancel, oldest first
        self._watches: dict[str, Watch] = {}  # renders in progress in this process, by prompt id

    def __repr__(self) -> str:
        return f"ComfyUIBackend({self.url!r})"

    # --- what the server can run ----------------------------------------------------------------------------
    async def _info(self, *, refresh: bool = False) -> dict[str, Any]:
        async with self._info_lock:
            stale = time.monotonic() - self._fetched_at >= self._ttl
            if refresh or self._object_info is None or stale:
                info = await self._client.get_json("/object_info")
                if not isinstance(info, dict):
                    raise BackendUnavailable(f"{self.url}/object_info did not answer a JSON object")
                self._object_info, self._capabilities = info, capabilities_from_object_info(info)
                self._fetched_at = time.monotonic()
            return self._object_info

    async def capabilities(self, *, refresh: bool = False) -> Capabilities:
        await self._info(refresh=refresh)
        assert self._capabilities is not None
        return self._capabilities

    async def validate(self, graph: dict[str, Any]) -> None:
        info = await self._info()
        problems = check_graph(graph, info)
        if problems and time.monotonic() - self._fetched_at > 1.0:  # a model may have been added since
            problems = check_graph(graph, await self._info(refresh=True))
        if problems:
            raise graph_invalid(problems, source=f"the graph does not fit ComfyUI at {self.url}")

    # --- inputs ---------------------------------------------------------------------------------------------
    async def upload_image(self, data: bytes, name: str) -> str:
        safe = _UNSAFE.sub("_", PurePosixPath(name.replace("\\", "/")).name).strip("._")[:100] or "upload.png"
        form = aiohttp.FormData()
        form.add_field(
            "image",
            data,
            filename=safe,
            content_type=mimetypes.guess_type(safe)[0] or "application/octet-stream",
        )
        form.add_field("type", "input")
        form.add_field("overwrite", "true")
        reply = await self._client.request("POST", "/upload/image", data=form)
        try:
            body = reply.json() if reply.status == 200 else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise BackendUnavailable(
                f"ComfyUI at {self.url} refused the upload of {safe!r}: "
                f"HTTP {reply.status} {reply.text(200)}",
                details={"backend": self.url, "status": reply.status},
            )
        subfolder = body.get("subfolder") or ""
        return f"{subfolder}/{body['name']}" if subfolder else body["name"]

    # --- prompts --------------------------------------------------------------------------------------------
    async def _history(self, prompt_id: str) -> PromptStatus | None:
        history = await self._client.get_json(f"/history/{quote(prompt_id, safe='')}")
        if isinstance(history, dict) and prompt_id in history:
            return parse_history_entry(history[prompt_id])
        return None  # `{}` until the prompt has finished

    async def _locate(self, prompt_id: str) -> tuple[PromptStatus, str | None]:
        """History first (the truth), then the queue, then history again in case it finished in between.

        Returns the status and, while queued, the client id it was posted with.
        """
        if (finished := await self._history(prompt_id)) is not None:
            return finished, None
        phase, client_id = find_in_queue(await self._client.get_json("/queue"), prompt_id)
        if phase is not PromptPhase.UNKNOWN:
            return PromptStatus(phase), client_id
        return (await self._history(prompt_id)) or PromptStatus(PromptPhase.UNKNOWN), None

    async def lookup(self, prompt_id: str) -> PromptStatus:
        return (await self._locate(prompt_id))[0]

    async def render(
        self, graph: dict[str, Any], prompt_id: str, *, on_event: OnEvent | None = None, stall_timeout: float
    ) -> list[OutputRef]:
        if prompt_id in self._canceled:
            raise Canceled(f"prompt {prompt_id} was canceled", details={"prompt_id": prompt_id})
        status, client_id = await self._locate(prompt_id)
        if status.phase is PromptPhase.SUCCEEDED:  # a previous attempt finished: adopt it
            return outputs_or_raise(prompt_id, status.outputs, self.url)
        attach = status.phase in (PromptPhase.PENDING, PromptPhase.RUNNING)
        if status.phase is PromptPhase.FAILED:  # else the old entry would read as this run's result
            await self._client.post_json("/history", {"delete": [prompt_id]})
        # Attaching reuses the poster's client id, so ComfyUI sends the rest of its frames to us (fact 9).
        client_id = (client_id if attach else None) or f"comfyflow-{uuid.uuid4().hex}"
        # The socket opens before the POST: frames sent before it connects are lost.
        socket = await Socket.connect(self._client, client_id)
        watch = Watch(
            self._client, self._locate, self._stop, prompt_id=prompt_id, client_id=client_id, graph=graph,
            on_event=on_event, stall_timeout=stall_timeout, canceled=lambda: prompt_id in self._canceled,
        )  # fmt: skip
        try:
            if not attach:
                await self._post(graph, prompt_id, client_id)
        except BaseException:
            await socket.close()
            raise
        self._watches[prompt_id] = watch
        try:
            final = await watch.run(socket)
        finally:
            if self._watches.get(prompt_id) is watch:
                del self._watches[prompt_id]
        if final.phase is PromptPhase.FAILED:
            raise failure(prompt_id, final.error, canceled=prompt_id in self._canceled, backend=self.url)
        return outputs_or_raise(prompt_id, final.outputs, self.url)

    async def _post(self, graph: dict[str, Any], prompt_id: str, client_id: str) -> None:
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        reply = await self._client.request("POST", "/prompt", json_body=body)
        try:
            answer = reply.json()
        except ValueError:
            answer = None
        if reply.status == 200 and isinstance(answer, dict):
            if answer.get("node_errors"):  # partly valid: ComfyUI runs the rest and silently drops outputs
                await self._discard(prompt_id)
                raise rejected_by_server(answer, status=200)
            return
        if reply.status == 400:
            if isinstance(answer, dict):
                raise rejected_by_server(answer, status=400)
            raise rejected_by_server({"error": {"message": reply.text(500)}}, status=400)
        raise BackendUnavailable(
            f"ComfyUI at {self.url} answered POST /prompt with HTTP {reply.status}: {reply.text(200)!r}",
            details={"backend": self.url, "status": reply.status, "body": reply.text(500)},
        )

    async def _stop(self, prompt_id: str) -> None:
        """Delete from the queue (no-op unless pending), then interrupt (no-op unless running)."""
        for path, body in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                await self._client.post_json(path, body)
            except BackendUnavailable:
                pass

    async def _discard(self, prompt_id: str) -> None:
        """Stop a prompt we will not use, and forget its history so no later attempt adopts it."""
        await self._stop(prompt_id)
        for _ in range(40):
            try:
                if (await self.lookup(prompt_id)).phase not in (PromptPhase.PENDING, PromptPhase.RUNNING):
                    break
            except BackendUnavailable:
                break
            await asyncio.sleep(0.05)
        try:
            await self._client.post_json("/history", {"delete": [prompt_id]})
        except BackendUnavailable:
            pass

    async def cancel(self, prompt_id: str) -> None:
        self._canceled[prompt_id] = None
        while len(self._canceled) > _REMEMBERED_CANCELS:
            del self._canceled[next(iter(self._canceled))]
        status = await self.lookup(prompt_id)
        if status.phase is PromptPhase.PENDING:
            await self._client.post_json("/queue", {"delete": [prompt_id]})
            status = await self.lookup(prompt_id)  # it may have started meanwhile
        if status.phase is PromptPhase.RUNNING:
            await self._client.post_json("/interrupt", {"prompt_id": prompt_id})
        if prompt_id in self._watches:  # a render here waits on it: let it see the outcome now
            self._watches[prompt_id].poke()

    # --- outputs and housekeeping ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def open_output(self, ref: OutputRef, *, max_bytes: int) -> AsyncIterator[OutputStream]:
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        async with self._client.download("/view", params, max_bytes=max_bytes) as download:
            content_type = content_type_for(ref.filename, download.content_type)
            extension = file_extension(ref.filename, content_type)
            yield OutputStream(content_type, extension, download.chunks, download.length)

    async def free(self) -> None:
        await self._client.post_json("/free", {"unload_models": True, "free_memory": True})

    async def health(self) -> BackendHealth:
        started = time.monotonic()
        try:
            stats = await self._client.get_json("/system_stats", seconds=HEALTH_TIMEOUT)
            queue = await self._client.get_json("/prompt", seconds=HEALTH_TIMEOUT)
            remaining = queue["exec_info"]["queue_remaining"]
            version = (stats.get("system") or {}).get("comfyui_version", "?")
            return BackendHealth(True, time.monotonic() - started, int(remaining), f"ComfyUI {version}")
        except Exception as exc:  # health never raises
            return BackendHealth(False, time.monotonic() - started, None, f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        await self._client.aclose()


def ComfyUIBackendFactory(url: str, *, settings: Settings | None = None) -> ComfyUIBackend:
    """Build the backend for one ComfyUI base URL (the ``comfyui`` entry point in ``comfyflow.backends``)."""
    return ComfyUIBackend(url, settings=settings)
