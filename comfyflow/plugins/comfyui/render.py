"""Waiting for one prompt: the WebSocket as a hint, ``/history/{prompt_id}`` as the truth.

Frames for the prompt become ``RenderEvent``s. The history is read when the socket says the prompt ended, when
the socket drops, and every few seconds anyway. Time waiting behind other prompts in ComfyUI's queue does not
count towards the stall timeout; time running without a frame does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from comfyflow.errors import BackendUnavailable, Canceled, NoOutputs, Stalled
from comfyflow.plugins.protocols import OnEvent, OutputRef, PromptPhase, PromptStatus, RenderEvent

from .client import ComfyUIClient
from .outputs import as_dict

_END = object()  # the socket closed
_POKE = object()  # look at history now (we just canceled the prompt)
_TERMINAL = ("execution_success", "execution_error", "execution_interrupted")
VANISH_GRACE = 2.0  # seconds a prompt may be in neither queue nor history before we call it lost
LOOKUP_RETRIES = 3
Locate = Callable[[str], Awaitable[tuple[PromptStatus, str | None]]]


class Socket:
    """One ``/ws`` connection; a task reads its text frames into a queue (binary frames are skipped)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.open = True
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, client: ComfyUIClient, client_id: str) -> Socket:
        return cls(await client.ws_connect(client_id))

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.frames.put_nowait(msg.data)
                elif msg.type is not aiohttp.WSMsgType.BINARY:  # previews and text blobs are of no use here
                    break
        except (aiohttp.ClientError, OSError, ValueError):
            pass
        finally:
            self.frames.put_nowait(_END)

    async def next(self, seconds: float) -> Any:
        """The next text frame, ``None`` after ``seconds``, or ``_END`` once the socket is closed."""
        if not self.frames.empty():
            frame = self.frames.get_nowait()
        elif seconds <= 0:
            return None
        else:
            try:
                frame = await asyncio.wait_for(self.frames.get(), timeout=seconds)
            except TimeoutError:
                return None
        if frame is _END:
            self.open = False
        return frame

    def poke(self) -> None:
        self.frames.put_nowait(_POKE)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self.ws.close()


def read_frame(raw: str, prompt_id: str, graph: dict[str, Any]) -> tuple[bool, RenderEvent | None, bool]:
    """(is it about our prompt, the event to report, does it say the prompt ended)."""
    try:
        frame = json.loads(raw)
    except ValueError:
        return False, None, False
    kind = as_dict(frame).get("type")
    data = as_dict(as_dict(frame).get("data"))
    # A reconnected socket gets `executing` without prompt_id (PROTOCOL.md fact 9); our client id is unique.
    owner = data.get("prompt_id", prompt_id if kind == "executing" else None)
    if owner != prompt_id:
        return False, None, False
    node = data.get("node")
    node = str(node) if node is not None else None
    node_type = (graph.get(node) or {}).get("class_type") if node is not None else None
    if kind == "execution_start":
        return True, RenderEvent("started"), False
    if kind == "execution_cached":
        cached = data.get("nodes")
        count = len(cached) if isinstance(cached, list) else 0
        return True, RenderEvent("cached", value=count, max=len(graph)), False
    if kind == "executing":
        if node is None:
            return True, None, "prompt_id" in data
        return True, RenderEvent("node", node=node, node_type=node_type), False
    if kind == "progress":
        value, top = data.get("value"), data.get("max")
        return True, RenderEvent("progress", node, node_type, _int(value), _int(top)), False
    if kind == "executed":
        return True, RenderEvent("executed", node=node, node_type=node_type), False
    return True, None, kind in _TERMINAL


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Watch:
    """Follows one prompt on one backend until history shows it finished."""

    def __init__(
        self, client: ComfyUIClient, locate: Locate, stop: Callable[[str], Awaitable[None]], *,
        prompt_id: str, client_id: str, graph: dict[str, Any], on_event: OnEvent | None, stall_timeout: float,
        canceled: Callable[[], bool],
    ) -> None:  # fmt: skip
        self.client, self.locate, self.stop = client, locate, stop
        self.prompt_id, self.client_id, self.graph = prompt_id, client_id, graph
        self.on_event, self.stall_timeout, self.canceled = on_event, stall_timeout, canceled
        self.check_every = min(2.0, max(0.05, stall_timeout / 4))
        self.socket: Socket | None = None
        self._poked = False
        self._now = asyncio.get_running_loop().time

    def poke(self) -> None:
        """Make the watch read history now instead of at its next periodic check."""
        self._poked = True
        if self.socket is not None:
            self.socket.poke()

    async def run(self, socket: Socket | None) -> PromptStatus:
        """Wait until history shows the prompt SUCCEEDED or FAILED.

        Raises:
            Stalled, Canceled, BackendUnavailable.
        """
        now = self._now
        self.socket = socket
        last_activity = last_check = now()
        ended_hint, backoff, failures = False, 0.02, 0
        unknown_since: float | None = None
        next_reconnect = now()
        try:
            while True:
                if socket is not None and socket.open:
                    wait = backoff if ended_hint else self.check_every - (now() - last_check)
                    wait = min(wait, last_activity + self.stall_timeout - now())
                    frame = await socket.next(wait)
                    if isinstance(frame, str):
                        ours, event, ended = read_frame(frame, self.prompt_id, self.graph)
                        if ours:
                            last_activity = now()
                            ended_hint = ended_hint or ended
                            if event is not None and self.on_event is not None:
                                await self.on_event(event)
                            if not ended:
                                continue
                    due = (
                        ended_hint or self._poked or not socket.open or now() - last_check >= self.check_every
                    )
                else:  # frames were lost while it was down: read history after every (re)connect attempt
                    await asyncio.sleep(max(0.0, min(backoff, last_activity + self.stall_timeout - now())))
                    if now() >= next_reconnect:
                        socket, next_reconnect = await self._reconnect(socket), now() + 1.0
                        self.socket = socket
                    due = True
                stalled = now() - last_activity >= self.stall_timeout
                if not (due or stalled):
                    continue
                try:
                    status, _ = await self.locate(self.prompt_id)
                    failures = 0
                except BackendUnavailable:
                    failures += 1
                    if failures >= LOOKUP_RETRIES:
                        raise
                    backoff = min(backoff * 2, 1.0)
                    await asyncio.sleep(backoff)
                    continue
                last_check, self._poked = now(), False
                if status.phase in (PromptPhase.SUCCEEDED, PromptPhase.FAILED):
                    return status
                if status.phase is PromptPhase.PENDING:  # waiting behind other prompts is not a stall
                    last_activity, unknown_since = now(), None
                elif status.phase is PromptPhase.RUNNING:
                    unknown_since = None
                else:
                    unknown_since = unknown_since if unknown_since is not None else now()
                    if self.canceled() or now() - unknown_since >= VANISH_GRACE:
                        raise self._vanished()
                if ended_hint or socket is None or not socket.open:
                    backoff = min(backoff * 2, 0.5)
                if now() - last_activity >= self.stall_timeout:
                    await self.stop(self.prompt_id)
                    raise self._stalled(status.phase)
        finally:
            self.socket = None
            if socket is not None:
                await socket.close()

    async def _reconnect(self, socket: Socket | None) -> Socket | None:
        """Reopen the socket with the same client id: ComfyUI re-points the prompt's frames at it (fact 9)."""
        if socket is not None:
            await socket.close()
        try:
            return await Socket.connect(self.client, self.client_id)
        except BackendUnavailable:
            return None

    def _vanished(self) -> Exception:
        details = {"prompt_id": self.prompt_id, "backend": self.client.url}
        if self.canceled():
            return Canceled(
                f"prompt {self.prompt_id} was removed from the backend's queue as requested", details=details
            )
        return BackendUnavailable(
            f"prompt {self.prompt_id} disappeared from {self.client.url} (neither queued nor in history); "
            "the server may have restarted or someone removed it",
            details=details,
        )

    def _stalled(self, phase: PromptPhase) -> Stalled:
        return Stalled(
            f"prompt {self.prompt_id} sent no progress for {self.stall_timeout:g} s while {phase.value} on "
            f"{self.client.url}; it was interrupted",
            details={
                "prompt_id": self.prompt_id,
                "backend": self.client.url,
                "stall_timeout": self.stall_timeout,
            },
        )


def outputs_or_raise(prompt_id: str, outputs: list[OutputRef], url: str) -> list[OutputRef]:
    if not outputs:
        raise NoOutputs(
            f"prompt {prompt_id} finished on {url} without an output file; the graph needs a SaveImage "
            "(or another saving) node",
            details={"prompt_id": prompt_id, "backend": url},
        )
    return outputs
