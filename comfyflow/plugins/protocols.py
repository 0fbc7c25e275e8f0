"""One Protocol per extension point: render backends, artifact storage, and (see auth) callers.

Plugins are found through the entry-point groups ``comfyflow.backends``, ``comfyflow.storage`` and
``comfyflow.auth``; built-ins register through the same groups. Plugins import neither sanic nor prefect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from os import PathLike
from typing import Any, Protocol, runtime_checkable

# --- render backends --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputRef:
    """One output file of a finished prompt, as the backend names it. Never used as a storage path."""

    node_id: str
    kind: str  # ComfyUI output key: images, gifs, videos, audio, ...
    filename: str
    subfolder: str = ""
    type: str = "output"


@dataclass(frozen=True)
class OutputStream:
    """One output file while it downloads: what it is, and its bytes in chunks (never the whole file at once)."""

    content_type: str
    extension: str  # lower-case, without dot, e.g. "png"
    chunks: AsyncIterator[bytes]
    size: int | None = None  # the length the server announced, when it did


class PromptPhase(StrEnum):
    UNKNOWN = "unknown"  # the backend has never heard of it (or forgot it)
    PENDING = "pending"  # waiting in the backend's own queue
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # runtime error or interrupted


@dataclass(frozen=True)
class PromptStatus:
    phase: PromptPhase
    outputs: list[OutputRef] = field(default_factory=list)
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class RenderEvent:
    """A progress hint from the backend while a prompt runs."""

    type: str  # "started", "node", "progress", "cached", "executed"
    node: str | None = None
    node_type: str | None = None
    value: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class Capabilities:
    node_classes: frozenset[str]
    models: dict[str, list[str]]  # folder ("checkpoints", "loras", ...) -> file names
    samplers: list[str] = field(default_factory=list)
    schedulers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BackendHealth:
    ok: bool
    latency_s: float
    queue_remaining: int | None = None
    detail: str = ""


OnEvent = Callable[[RenderEvent], Awaitable[None]]


@runtime_checkable
class Backend(Protocol):
    """A render server (one ComfyUI instance). Created per process and shared by every job on it."""

    url: str

    async def capabilities(self, *, refresh: bool = False) -> Capabilities:
        """What the server can run (node classes, model files), cached for the configured TTL.

        Raises:
            BackendUnavailable: when the server cannot be reached.
        """
        ...

    async def validate(self, graph: dict[str, Any]) -> None:
        """Check a graph against ``capabilities`` before it is queued.

        Raises:
            GraphInvalid: naming each bad node, with the models that do exist.
        """
        ...

    async def upload_image(self, data: bytes, name: str) -> str:
        """Upload an input image; return the name a LoadImage node takes."""
        ...

    async def lookup(self, prompt_id: str) -> PromptStatus:
        """Where a prompt is: history first (the truth), then the queue. Never reads the whole history."""
        ...

    async def render(
        self, graph: dict[str, Any], prompt_id: str, *, on_event: OnEvent, stall_timeout: float
    ) -> list[OutputRef]:
        """Queue the graph under ``prompt_id`` and wait until it finishes; or, when ``prompt_id`` is already
        pending or running on this backend, attach to it without queueing it again.

        Returns:
            The output files, read from history (the socket is only a hint).
        Raises:
            GraphInvalid, ExecutionFailed, OutOfMemory, BackendUnavailable, Stalled, NoOutputs.
        """
        ...

    async def cancel(self, prompt_id: str) -> None:
        """Remove the prompt from the backend's queue if pending; interrupt it if running. Idempotent."""
        ...

    def open_output(self, ref: OutputRef, *, max_bytes: int) -> AbstractAsyncContextManager[OutputStream]:
        """Start downloading one output file; read ``chunks`` inside the ``async with``, which closes the
        download on exit. Chunks are bounded (about 1 MiB): a caller that writes each one away holds no more.

        Raises (on entering, or while ``chunks`` is read):
            OutputTooLarge: when its announced size is bigger than ``max_bytes``, or once more than ``max_bytes``
                bytes have arrived (a server that announced no size, or a wrong one).
            BackendUnavailable: on connection errors, a cut-off download and answers other than success.
        """
        ...

    async def free(self) -> None:
        """Ask the server to release memory (after an out-of-memory error)."""
        ...

    async def health(self) -> BackendHealth:
        """Probe the server; never raises."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...


class BackendFactory(Protocol):
    """What the ``comfyflow.backends`` entry point names: builds a Backend for one base URL."""

    def __call__(self, url: str, *, settings: Any) -> Backend: ...


# --- storage ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    content_type: str


@runtime_checkable
class Storage(Protocol):
    """Where artifacts live: a key space (``jobs/{job_id}/...``) on some fsspec filesystem."""

    url: str

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Write atomically: no reader ever sees a partial object. Verifies size after writing.

        Raises:
            StorageError: when the write fails or cannot be verified.
        """
        ...

    async def put_file(
        self, key: str, path: str | PathLike[str], *, content_type: str, sha256: str | None = None
    ) -> StoredObject:
        """Write the local file at ``path`` to ``key`` without reading it into memory whole (bounded chunks or
        parts), atomically like ``put``: no reader ever sees a partial object, and a failed or cancelled write
        leaves none (nor anything of it). Verifies the size after writing.

        Args:
            key: where it goes.
            path: a local file; not modified.
            content_type: MIME type.
            sha256: the file's digest (hex) when the caller computed it while writing the file; recorded as given.
                Computed here, reading the file in chunks, when None.
        Returns:
            The key, size, sha256 and content type of what was written.
        Raises:
            ValidationError: when the key is not valid.
            StorageError: when the file cannot be read, or the write fails or cannot be verified.
        """
        ...

    async def get(self, key: str) -> bytes:
        """Read a whole object. Raises NotFound when absent, StorageError on other failures."""
        ...

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """Read bytes [start, end) of an object. Raises NotFound when absent."""
        ...

    async def info(self, key: str) -> StoredObject | None:
        """Size (and what is known) of an object, or None when it does not exist."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many. Idempotent."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""
        ...

    async def signed_url(self, key: str, *, expires_in: int) -> str | None:
        """A direct download URL valid for ``expires_in`` seconds, or None when the API must serve the file."""
        ...

    async def aclose(self) -> None:
        """Release clients."""
        ...
