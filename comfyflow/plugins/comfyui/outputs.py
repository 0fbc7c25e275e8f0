"""Reading ComfyUI's history and queue: output files, where a prompt is, and why it failed.

``GET /history/{prompt_id}`` is the truth about a finished prompt (PROTOCOL.md section 3); the socket is only
a hint.
"""

from __future__ import annotations

import mimetypes
import re
from typing import Any

from comfyflow.errors import BackendUnavailable, Canceled, ExecutionFailed, OutOfMemory, RenderError
from comfyflow.plugins.protocols import OutputRef, PromptPhase, PromptStatus

_OOM = re.compile(r"out of memory|outofmemory|\boom\b|allocation on device", re.IGNORECASE)
_EXTENSION = re.compile(r"[a-z0-9]{1,5}")
#: Extensions mimetypes gets wrong or does not know, by content type.
_EXTENSIONS = {"image/jpeg": "jpg", "audio/mpeg": "mp3", "audio/flac": "flac", "image/webp": "webp"}
_TRACEBACK_LINES = 12


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: server answers are read defensively."""
    return value if isinstance(value, dict) else {}


def node_order(node_id: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for node ids: numeric parts numerically ("2" < "10"), subgraph ids ("12:3") part by part."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in str(node_id).split(":"))


def parse_outputs(outputs: Any) -> list[OutputRef]:
    """Every output file in a history ``outputs`` map, in node order.

    Any list of objects with a ``filename`` counts (images, gifs, videos, audio, 3D files, ...). Items of type
    "output" are kept; "temp" items (previews) only when there is no "output" item at all.
    """
    if not isinstance(outputs, dict):
        return []
    saved: list[OutputRef] = []
    temp: list[OutputRef] = []
    seen: set[tuple[str, str, str]] = set()
    for node_id in sorted(outputs, key=node_order):
        node_out = outputs[node_id]
        if not isinstance(node_out, dict):
            continue
        for kind, items in node_out.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if (
                    not isinstance(item, dict)
                    or not isinstance(item.get("filename"), str)
                    or not item["filename"]
                ):
                    continue
                ref = OutputRef(
                    node_id=str(node_id),
                    kind=str(kind),
                    filename=item["filename"],
                    subfolder=str(item.get("subfolder") or ""),
                    type=str(item.get("type") or "output"),
                )
                key = (ref.type, ref.subfolder, ref.filename)
                if key in seen:
                    continue
                seen.add(key)
                if ref.type == "output":
                    saved.append(ref)
                elif ref.type == "temp":
                    temp.append(ref)
    return saved or temp


def _error_from_messages(messages: Any) -> dict[str, Any]:
    for message in messages if isinstance(messages, list) else []:
        if not (isinstance(message, list | tuple) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        event, data = message
        if event in ("execution_error", "execution_interrupted"):
            return error_info(event, data)
    return {"kind": "error", "exception_message": "ComfyUI reported status 'error' without an error message"}


def error_info(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able facts of an ``execution_error`` / ``execution_interrupted`` payload."""
    info: dict[str, Any] = {
        "kind": "interrupted" if event == "execution_interrupted" else "error",
        "node_id": data.get("node_id"),
        "node_type": data.get("node_type"),
    }
    if info["kind"] == "error":
        info["exception_type"] = data.get("exception_type") or ""
        info["exception_message"] = str(data.get("exception_message") or "").strip()
        traceback = data.get("traceback")
        if isinstance(traceback, list):
            info["traceback"] = [str(line) for line in traceback[-_TRACEBACK_LINES:]]
    return info


def parse_history_entry(entry: Any) -> PromptStatus:
    """A finished prompt's history entry -> SUCCEEDED (with outputs) or FAILED (with error facts)."""
    if not isinstance(entry, dict):
        return PromptStatus(PromptPhase.UNKNOWN)
    outputs = parse_outputs(entry.get("outputs"))
    status = as_dict(entry.get("status"))
    if status.get("status_str", "success") == "success" and status.get("completed", True):
        return PromptStatus(PromptPhase.SUCCEEDED, outputs=outputs)
    return PromptStatus(
        PromptPhase.FAILED, outputs=outputs, error=_error_from_messages(status.get("messages"))
    )


def find_in_queue(queue: Any, prompt_id: str) -> tuple[PromptPhase, str | None]:
    """Where ``prompt_id`` is in a ``GET /queue`` answer, and the client_id it was posted with."""
    if not isinstance(queue, dict):
        return PromptPhase.UNKNOWN, None
    for key, phase in (("queue_running", PromptPhase.RUNNING), ("queue_pending", PromptPhase.PENDING)):
        for item in queue.get(key) or []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                extra = as_dict(item[3]) if len(item) > 3 else {}
                client_id = extra.get("client_id")
                return phase, client_id if isinstance(client_id, str) else None
    return PromptPhase.UNKNOWN, None


def is_out_of_memory(info: dict[str, Any]) -> bool:
    text = f"{info.get('exception_type', '')} {info.get('exception_message', '')}"
    return bool(_OOM.search(text))


def failure(prompt_id: str, info: dict[str, Any] | None, *, canceled: bool, backend: str = "") -> RenderError:
    """The error to raise for a failed prompt, classified (DESIGN.md decision 5)."""
    info = dict(info or {})
    info.update(prompt_id=prompt_id, backend=backend)
    where = f"node {info.get('node_id')} ({info.get('node_type')})" if info.get("node_id") else "a node"
    if info.get("kind") == "interrupted":
        if canceled:
            return Canceled(f"prompt {prompt_id} was interrupted as requested at {where}", details=info)
        return BackendUnavailable(
            f"prompt {prompt_id} was interrupted at {where} by someone else on the backend; retry it",
            details=info,
        )
    exc = f"{info.get('exception_type') or 'error'}: {info.get('exception_message') or '(no message)'}"
    if is_out_of_memory(info):
        return OutOfMemory(f"{where} ran out of memory: {exc}", details=info)
    return ExecutionFailed(f"{where} failed: {exc}", details=info)


def file_extension(filename: str, content_type: str) -> str:
    """A safe lower-case extension (``[a-z0-9]{1,5}``): the filename's own, else one for the content type."""
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if _EXTENSION.fullmatch(suffix):
        return suffix
    guessed = _EXTENSIONS.get(content_type) or (mimetypes.guess_extension(content_type) or "").lstrip(".")
    return guessed if _EXTENSION.fullmatch(guessed) else "bin"


def content_type_for(filename: str, reported: str) -> str:
    """The server's content type, or one guessed from the file name when it sent none (or a generic one)."""
    if reported and reported != "application/octet-stream":
        return reported
    return mimetypes.guess_type(filename)[0] or reported or "application/octet-stream"
