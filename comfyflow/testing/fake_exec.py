"""Prompt execution of the fake ComfyUI server (ComfyUI 0.8.0's ``PromptExecutor`` with the classic cache).

Frames are emitted in the server's order: ``execution_start``, ``execution_cached``, then per node
``progress_state`` (running), ``executing``, ``progress_state``+``progress`` per tick, ``executed`` for
output nodes, ``progress_state`` (finished); cached output nodes only replay ``executed``. The terminal
``execution_success`` / ``execution_error`` / ``execution_interrupted`` follows. The caller (the server's
worker) writes history and sends the final ``status`` and ``executing {node: null}``.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyflow.testing.fake_graph import (
    PROGRESS_CLASSES,
    SAMPLER_CLASSES,
    ExecutionList,
    descendants,
    full_type_name,
    is_link,
    node_signatures,
)
from comfyflow.testing.fake_nodes import (
    OOM_MESSAGE,
    OOM_TIPS,
    Dirs,
    InjectedFailure,
    OutOfMemoryError,
    node_function,
    write_png,
)

if TYPE_CHECKING:
    from comfyflow.testing.fake_comfyui import FakeComfyUI

_PREVIEW_LETTERS = "abcdefghijklmnopqrstupvxyz"  # sic: ComfyUI's own alphabet for the PreviewImage infix
_HANG_POLL = 0.02


class Interrupted(Exception):
    """ComfyUI's ``InterruptProcessingException``."""


@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    seq: int

    def __lt__(self, other: QueueItem) -> bool:
        return (self.number, self.prompt_id, self.seq) < (other.number, other.prompt_id, other.seq)

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")


@dataclass
class RunResult:
    success: bool
    messages: list[list[Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def now_ms() -> int:
    return int(time.time() * 1000)


def _format_value(x: Any) -> Any:
    if x is None or isinstance(x, int | float | bool | str):
        return x
    return str(x)


class Executor:
    """Runs one prompt at a time; owns the output/UI caches that persist between prompts."""

    def __init__(self, server: FakeComfyUI, dirs: Dirs) -> None:
        self.server = server
        self.dirs = dirs
        self.outputs: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.preview_infixes: dict[tuple[str, str], str] = {}

    def reset(self) -> None:
        """``POST /free {"free_memory": true}``: drop every cached node output."""
        self.outputs.clear()
        self.ui.clear()

    def _is_changed(self, node_id: str, node: dict[str, Any]) -> Any:
        if node.get("class_type") in ("LoadImage", "LoadImageMask"):
            try:
                path = self.dirs.annotated_path(str(node["inputs"]["image"]))
                st = os.stat(path)
                return f"{path}:{st.st_size}:{st.st_mtime_ns}"
            except (OSError, KeyError, TypeError):
                return None
        return False

    async def run(self, item: QueueItem) -> RunResult:
        return await _PromptRun(self, item).run()


class _PromptRun:
    def __init__(self, executor: Executor, item: QueueItem) -> None:
        self.ex = executor
        self.srv = executor.server
        self.item = item
        self.prompt = item.prompt
        self.prompt_id = item.prompt_id
        self.client_id = item.client_id
        self.result = RunResult(success=True)
        self.registry: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.node_budget: dict[str, float] = {}

    # -- messages ------------------------------------------------------------------------------------
    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.result.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.srv.send(event, data, self.client_id)

    def send_progress_state(self) -> None:
        nodes = {
            node_id: {
                "value": st["value"],
                "max": st["max"],
                "state": st["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, st in self.registry.items()
        }
        self.srv.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id)

    def start_progress(self, node_id: str) -> None:
        self.registry[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}
        self.send_progress_state()

    def finish_progress(self, node_id: str) -> None:
        st = self.registry.setdefault(node_id, {"value": 0, "max": 1, "state": "pending"})
        st["state"] = "finished"
        st["value"] = st["max"]
        self.send_progress_state()

    # -- run -----------------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        srv, faults = self.srv, self.srv.faults
        srv.current_client_id = self.client_id
        srv.interrupt_flag = False
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, False)
        if faults.drop_socket:
            srv.drop_sockets_soon()

        catalog = srv.catalog
        sigs = node_signatures(
            self.prompt,
            self.ex._is_changed,
            lambda node_id: self.prompt[node_id].get("class_type") == "GetImageSize",
        )
        keep = set(sigs.values())
        for cache in (self.ex.outputs, self.ex.ui):
            for key in [k for k in cache if k not in keep]:
                del cache[key]
        live = {(nid, str(node.get("class_type"))) for nid, node in self.prompt.items()}
        for stale in [k for k in self.ex.preview_infixes if k not in live]:
            del self.ex.preview_infixes[stale]

        forced = self._forced_uncached(sigs)
        self.sigs = sigs

        def cached(node_id: Any) -> bool:
            return node_id not in forced and sigs.get(str(node_id)) in self.ex.outputs

        self.add_message(
            "execution_cached",
            {"nodes": [n for n in self.prompt if cached(n)], "prompt_id": self.prompt_id},
            False,
        )
        elist = ExecutionList(self.prompt, cached, lambda n: catalog.is_output(self.prompt[n]["class_type"]))
        for output_id in self.item.outputs:
            elist.add_node(output_id)
        self._plan_budget([n for n in elist.nodes() if not cached(n)])

        while not elist.is_empty():
            node_id = elist.next_node()
            if node_id is None:
                cycle = elist.nodes()
                self._record_error(
                    cycle[0], "Dependency cycle detected", "graph.DependencyCycleError", [], {}
                )
                break
            try:
                if cached(node_id):
                    await self._replay_cached(node_id)
                else:
                    await self._execute(node_id)
            except Interrupted:
                self.result.success = False
                self.add_message(
                    "execution_interrupted",
                    {
                        "prompt_id": self.prompt_id,
                        "node_id": node_id,
                        "node_type": self.prompt[node_id]["class_type"],
                        "executed": list(self.executed),
                    },
                    True,
                )
                break
            except Exception as ex:
                typ, _, tb = sys.exc_info()
                tips = OOM_TIPS if isinstance(ex, OutOfMemoryError) else ""
                self._record_error(
                    node_id,
                    f"{ex}\n{tips}",
                    full_type_name(typ or type(ex)),
                    traceback.format_tb(tb),
                    getattr(self, "_current_inputs", {}),
                )
                break
            elist.complete(node_id)
        else:
            self.add_message("execution_success", {"prompt_id": self.prompt_id}, False)

        for node_id, entry in self.ui_outputs.items():
            self.result.outputs[node_id] = entry["output"]
            self.result.meta[node_id] = entry["meta"]
        srv.last_node_id = None
        return self.result

    def _record_error(
        self, node_id: str, message: str, exc_type: str, tb: list[str], inputs: dict[str, Any]
    ) -> None:
        self.result.success = False
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": self.prompt[node_id]["class_type"],
                "executed": list(self.executed),
                "exception_message": message,
                "exception_type": exc_type,
                "traceback": tb,
                "current_inputs": inputs,
                "current_outputs": list(self.prompt),
            },
            False,
        )

    def _reachable(self) -> list[str]:
        seen: list[str] = []
        stack = list(self.item.outputs)
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id not in self.prompt:
                continue
            seen.append(node_id)
            stack += [str(v[0]) for v in self.prompt[node_id]["inputs"].values() if is_link(v)]
        return seen

    def _fault_target(self) -> str | None:
        """The node an ``oom`` fault fails at: the first sampler, else the first output node."""
        reachable = self._reachable()
        samplers = [
            n for n in self.prompt if n in reachable and self.prompt[n]["class_type"] in SAMPLER_CLASSES
        ]
        return samplers[0] if samplers else (self.item.outputs[0] if self.item.outputs else None)

    def _forced_uncached(self, sigs: dict[str, str]) -> set[str]:
        """Nodes a fault must hit run again (and so does everything downstream of them)."""
        faults = self.srv.faults
        roots = {n for n, node in self.prompt.items() if node.get("class_type") in faults.fail_node_types}
        self.oom_target = self._fault_target() if faults.oom else None
        if self.oom_target is not None:
            roots.add(self.oom_target)
        return descendants(self.prompt, roots) if roots else set()

    def _plan_budget(self, to_run: list[str]) -> None:
        progress = [n for n in to_run if self.prompt[n]["class_type"] in PROGRESS_CLASSES]
        if progress:
            for node_id in progress:
                self.node_budget[node_id] = 1.0 / len(progress)
        elif to_run:
            self.node_budget[to_run[0]] = 1.0

    def _budget_seconds(self, node_id: str) -> float:
        return (
            self.srv.render_time * max(0.0, float(self.srv.faults.slow)) * self.node_budget.get(node_id, 0.0)
        )

    async def checkpoint(self) -> None:
        """Where ComfyUI checks its interrupt flag; also where the ``hang`` fault holds the prompt."""
        srv = self.srv
        hung = False
        while srv.faults.hang and not srv.interrupt_flag and srv.running:
            hung = True
            await asyncio.sleep(_HANG_POLL)
        if srv.interrupt_flag or (hung and not srv.running):
            raise Interrupted()

    async def _replay_cached(self, node_id: str) -> None:
        if self.srv.faults.hang:
            await self.checkpoint()
        if self.client_id is not None:
            cached_ui = self.ex.ui.get(self.sigs[node_id])
            self.srv.send(
                "executed",
                {
                    "node": node_id,
                    "display_node": node_id,
                    "output": (cached_ui or {}).get("output"),
                    "prompt_id": self.prompt_id,
                },
                self.client_id,
            )
            if cached_ui is not None:
                self.ui_outputs[node_id] = cached_ui
        self.finish_progress(node_id)

    async def _execute(self, node_id: str) -> None:
        srv, node = self.srv, self.prompt[node_id]
        class_type = node["class_type"]
        info = srv.catalog.get(class_type)
        inputs: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            inputs[name] = (
                self.ex.outputs[self.sigs[str(value[0])]][int(value[1])] if is_link(value) else value
            )
        self._current_inputs = {name: [_format_value(v)] for name, v in inputs.items()}

        self.start_progress(node_id)
        if self.client_id is not None:
            srv.last_node_id = node_id
            srv.send(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id},
                self.client_id,
            )
        await self.checkpoint()
        if class_type in srv.faults.fail_node_types:
            raise InjectedFailure(f"Injected failure: node type {class_type} is in fail_node_types")
        if node_id == getattr(self, "oom_target", None) and srv.faults.oom:
            raise OutOfMemoryError(OOM_MESSAGE)

        ctx = _Context(self, node_id, class_type)
        if class_type not in PROGRESS_CLASSES:
            seconds = self._budget_seconds(node_id)
            if seconds > 0:
                await asyncio.sleep(seconds)
                await self.checkpoint()
        outputs, ui = await node_function(class_type)(ctx, inputs, info)

        sig = self.sigs[node_id]
        if ui is not None:
            entry = {
                "meta": {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                },
                "output": ui,
            }
            self.ui_outputs[node_id] = entry
            self.ex.ui[sig] = entry
            if self.client_id is not None:
                srv.send(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id},
                    self.client_id,
                )
        self.ex.outputs[sig] = tuple(outputs)
        self.finish_progress(node_id)
        self.executed.append(node_id)


class _Context:
    """What a simulated node sees (``comfyflow.testing.fake_nodes.NodeContext``)."""

    def __init__(self, run: _PromptRun, node_id: str, class_type: str) -> None:
        self._run = run
        self.node_id = node_id
        self.class_type = class_type
        self.prompt = run.prompt
        self.extra_data = run.item.extra_data
        self.dirs = run.ex.dirs
        infixes = run.ex.preview_infixes
        key = (node_id, class_type)
        if class_type == "PreviewImage" and key not in infixes:
            infixes[key] = "_temp_" + "".join(random.choice(_PREVIEW_LETTERS) for _ in range(5))
        self.preview_infix = infixes.get(key, "")

    async def ticks(self, total: int) -> None:
        run, total = self._run, max(1, int(total))
        for step in range(1, total + 1):
            seconds = run._budget_seconds(self.node_id) / total
            await asyncio.sleep(seconds)
            await run.checkpoint()
            run.registry[self.node_id] = {"value": step, "max": total, "state": "running"}
            run.send_progress_state()
            run.srv.send(
                "progress",
                {"value": step, "max": total, "prompt_id": run.prompt_id, "node": self.node_id},
                run.client_id,
            )

    async def write_pngs(
        self, jobs: list[tuple[str, int, int, tuple[int, int, int], dict[str, str]]]
    ) -> None:
        def write_all() -> None:
            for path, width, height, color, texts in jobs:
                write_png(path, width, height, color, texts)

        if sum(w * h for _, w, h, _, _ in jobs) <= 256 * 256:
            write_all()
        else:
            await asyncio.to_thread(write_all)
