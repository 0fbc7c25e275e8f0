"""Graph logic of the fake ComfyUI server: node catalogue, prompt validation, execution order, cache keys.

The validation and scheduling code mirrors ComfyUI 0.8.0's ``execution.py`` / ``comfy_execution/graph.py``
closely enough that the same inputs produce the same error shapes (including its quirks, such as a link to
a missing node being reported against the *downstream* input), the same execution order, and the same
cache hits. The node definitions come from a real server's ``/object_info`` capture shipped in ``data/``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
OBJECT_INFO_PATH = DATA_DIR / "object_info.json.gz"

#: Samplers: the nodes that tick ``progress`` once per step and that an ``oom`` fault breaks.
SAMPLER_CLASSES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
#: Nodes that report progress (and so absorb the simulated render time).
PROGRESS_CLASSES = SAMPLER_CLASSES | {"ImageUpscaleWithModel"}
#: Nodes with a ``VALIDATE_INPUTS(image)`` that replaces the combo check by a file-exists check.
IMAGE_FILE_CLASSES = frozenset({"LoadImage", "LoadImageMask"})
_WILDCARD_TYPES = frozenset({"*", "COMFY_MATCHTYPE_V3", "COMFY_AUTOGROW_V3", "COMFY_DYNAMICCOMBO_V3"})


@functools.cache
def base_object_info() -> dict[str, Any]:
    """The captured ``/object_info`` of ComfyUI 0.8.0 (423 classes). Shared and read-only: never mutate."""
    with gzip.open(OBJECT_INFO_PATH, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
    )


def full_type_name(klass: type) -> str:
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return f"{module}.{klass.__qualname__}"


class NodeCatalog:
    """``/object_info`` with the checkpoint combos and LoadImage lists replaced by the fake's own."""

    def __init__(self, checkpoints: Sequence[str]) -> None:
        self.base = base_object_info()
        self.checkpoints = list(checkpoints)
        self._patched: dict[str, dict[str, Any]] = {}
        self._image_list_classes: list[str] = []
        for name, info in self.base.items():
            for category in ("required", "optional"):
                for input_name, spec in info.get("input", {}).get(category, {}).items():
                    if not isinstance(spec[0], list):
                        continue
                    extra = spec[1] if len(spec) > 1 else {}
                    if input_name == "ckpt_name":
                        self._patch(name, category, input_name, self.checkpoints)
                    elif extra.get("image_upload") and name not in self._image_list_classes:
                        self._image_list_classes.append(name)
        self._serialised: tuple[tuple[str, ...], bytes] | None = None

    def _patch(self, name: str, category: str, input_name: str, values: list[str]) -> dict[str, Any]:
        info = self._patched.get(name)
        if info is None:
            info = json.loads(json.dumps(self.base[name]))
            self._patched[name] = info
        spec = info["input"][category][input_name]
        spec[0] = list(values)
        return info

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self.base

    def get(self, class_type: str) -> dict[str, Any]:
        """Node definition used for validation (LoadImage's list is not needed: it validates by file)."""
        return self._patched.get(class_type) or self.base[class_type]

    def is_output(self, class_type: str) -> bool:
        return bool(self.get(class_type).get("output_node"))

    def with_input_files(self, class_type: str, input_files: list[str]) -> dict[str, Any]:
        info = self.get(class_type)
        if class_type not in self._image_list_classes:
            return info
        info = json.loads(json.dumps(info))
        for category in ("required", "optional"):
            spec = info["input"].get(category, {}).get("image")
            if spec is not None and isinstance(spec[0], list):
                spec[0] = list(input_files)
        return info

    def all_json(self, input_files: list[str]) -> bytes:
        key = tuple(input_files)
        if self._serialised is not None and self._serialised[0] == key:
            return self._serialised[1]
        out = {name: self.with_input_files(name, input_files) for name in self.base}
        body = json.dumps(out).encode()
        self._serialised = (key, body)
        return body


def _input_info(info: dict[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any]]:
    for category in ("required", "optional"):
        spec = info.get("input", {}).get(category, {}).get(name)
        if spec is not None:
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            return spec[0], category, extra
    return None, None, {}


def input_names(info: dict[str, Any]) -> list[str]:
    order = info.get("input_order") or {}
    names: list[str] = []
    for category in ("required", "optional"):
        names += order.get(category) or list(info.get("input", {}).get(category, {}))
    return names


def _types_match(received: Any, expected: Any) -> bool:
    if received == expected:
        return True
    if received in _WILDCARD_TYPES or expected in _WILDCARD_TYPES:
        return True
    if isinstance(expected, list) and received == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    received_set = {t.strip() for t in received.split(",")}
    expected_set = {t.strip() for t in expected.split(",")}
    return bool(received_set & expected_set)


def _error(type_: str, message: str, details: str, extra_info: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


class Validator:
    """ComfyUI's ``validate_prompt`` / ``validate_inputs``. ``file_exists`` backs LoadImage's validation."""

    def __init__(self, catalog: NodeCatalog, file_exists: Callable[[str], bool]) -> None:
        self.catalog = catalog
        self.file_exists = file_exists

    def validate_prompt(
        self, prompt: Any, partial_targets: Iterable[str] | None
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        outputs: list[str] = []
        for x in prompt:
            if "class_type" not in prompt[x]:
                return (
                    False,
                    _error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{x}'",
                        {},
                    ),
                    [],
                    {},
                )
            class_type = prompt[x]["class_type"]
            if class_type not in self.catalog:
                return (
                    False,
                    _error(
                        "invalid_prompt",
                        f"Cannot execute because node {class_type} does not exist.",
                        f"Node ID '#{x}'",
                        {},
                    ),
                    [],
                    {},
                )
            if self.catalog.is_output(class_type) and (partial_targets is None or x in partial_targets):
                outputs.append(x)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}
        # ComfyUI keeps outputs in a set; every capture shows them in reverse prompt order
        # (e.g. ["4", "3", "2"]), which also decides execution order. Reproduce that.
        outputs.reverse()

        good_outputs: list[str] = []
        errors: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        validated: dict[str, tuple[bool, list[dict[str, Any]], str]] = {}
        for o in outputs:
            try:
                valid, reasons, _ = self.validate_inputs(prompt, o, validated)
            except Exception as ex:
                typ, _, tb = sys.exc_info()
                valid = False
                reasons = [
                    _error(
                        "exception_during_validation",
                        "Exception when validating node",
                        str(ex),
                        {
                            "exception_type": full_type_name(typ or type(ex)),
                            "traceback": traceback.format_tb(tb),
                        },
                    )
                ]
                validated[o] = (False, reasons, o)
            if valid is True:
                good_outputs.append(o)
                continue
            errors.append((o, reasons))
            for node_id, result in validated.items():
                # Upstream failures mark downstream nodes invalid without reasons; those are not reported.
                if result[0] is not True and len(result[1]) > 0:
                    if node_id not in node_errors:
                        node_errors[node_id] = {
                            "errors": result[1],
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        }
                    node_errors[node_id]["dependent_outputs"].append(o)

        if not good_outputs:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in errors for e in reasons)
            error = _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}
            )
            return False, error, [], node_errors
        return True, None, good_outputs, node_errors

    def validate_inputs(
        self, prompt: dict[str, Any], unique_id: str, validated: dict[str, tuple[bool, list[Any], str]]
    ) -> tuple[bool, list[dict[str, Any]], str]:
        if unique_id in validated:
            return validated[unique_id]
        inputs = prompt[unique_id]["inputs"]
        class_type = prompt[unique_id]["class_type"]
        info = self.catalog.get(class_type)
        errors: list[dict[str, Any]] = []
        valid = True
        custom_inputs = {"image"} if class_type in IMAGE_FILE_CLASSES else set()

        for x in input_names(info):
            input_type, category, extra_info = _input_info(info, x)
            if x not in inputs:
                if category == "required":
                    errors.append(
                        _error("required_input_missing", "Required input is missing", x, {"input_name": x})
                    )
                continue
            val = inputs[x]
            config = [input_type, extra_info]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            x,
                            {"input_name": x, "input_config": config, "received_value": val},
                        )
                    )
                    continue
                o_id = val[0]
                o_class_type = prompt[o_id]["class_type"]
                received_type = tuple(self.catalog.get(o_class_type)["output"])[val[1]]
                if not _types_match(received_type, input_type):
                    details = f"{x}, received_type({received_type}) mismatch input_type({input_type})"
                    errors.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            details,
                            {
                                "input_name": x,
                                "input_config": config,
                                "received_type": received_type,
                                "linked_node": val,
                            },
                        )
                    )
                    continue
                try:
                    r = self.validate_inputs(prompt, o_id, validated)
                    if r[0] is False:
                        valid = False
                        continue
                except Exception as ex:
                    typ, _, tb = sys.exc_info()
                    valid = False
                    reasons = [
                        _error(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            str(ex),
                            {
                                "input_name": x,
                                "input_config": config,
                                "exception_message": str(ex),
                                "exception_type": full_type_name(typ or type(ex)),
                                "traceback": traceback.format_tb(tb),
                                "linked_node": val,
                            },
                        )
                    ]
                    validated[o_id] = (False, reasons, o_id)
                    continue
            else:
                try:
                    if isinstance(val, dict) and "__value__" in val:
                        val = val["__value__"]
                        inputs[x] = val
                    if input_type == "INT":
                        val = int(val)
                        inputs[x] = val
                    if input_type == "FLOAT":
                        val = float(val)
                        inputs[x] = val
                    if input_type == "STRING":
                        val = str(val)
                        inputs[x] = val
                    if input_type == "BOOLEAN":
                        val = bool(val)
                        inputs[x] = val
                except Exception as ex:
                    errors.append(
                        _error(
                            "invalid_input_type",
                            f"Failed to convert an input value to a {input_type} value",
                            f"{x}, {val}, {ex}",
                            {
                                "input_name": x,
                                "input_config": config,
                                "received_value": val,
                                "exception_message": str(ex),
                            },
                        )
                    )
                    continue
                if x in custom_inputs:
                    continue
                if "min" in extra_info and val < extra_info["min"]:
                    errors.append(
                        _error(
                            "value_smaller_than_min",
                            "Value {} smaller than min of {}".format(val, extra_info["min"]),
                            x,
                            {"input_name": x, "input_config": config, "received_value": val},
                        )
                    )
                    continue
                if "max" in extra_info and val > extra_info["max"]:
                    errors.append(
                        _error(
                            "value_bigger_than_max",
                            "Value {} bigger than max of {}".format(val, extra_info["max"]),
                            x,
                            {"input_name": x, "input_config": config, "received_value": val},
                        )
                    )
                    continue
                if isinstance(input_type, list) or input_type == "COMBO":
                    options = extra_info.get("options", []) if input_type == "COMBO" else input_type
                    if extra_info.get("multiselect", False) and isinstance(val, list):
                        invalid = [v for v in val if v not in options]
                    else:
                        invalid = [val] if val not in options else []
                    if invalid:
                        input_config: Any = config
                        if len(options) > 20:
                            list_info = f"(list of length {len(options)})"
                            input_config = None
                        else:
                            list_info = str(options)
                        errors.append(
                            _error(
                                "value_not_in_list",
                                "Value not in list",
                                f"{x}: '{val}' not in {list_info}",
                                {"input_name": x, "input_config": input_config, "received_value": val},
                            )
                        )
                        continue

        if custom_inputs:
            # LoadImage.VALIDATE_INPUTS(image): the file must exist (annotated names allowed).
            if "image" not in inputs:
                raise TypeError(
                    f"{class_type}.VALIDATE_INPUTS() missing 1 required positional argument: 'image'"
                )
            image = inputs["image"]
            if not self.file_exists(image):
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"image - Invalid image file: {image}",
                        {"input_name": "image"},
                    )
                )

        ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        validated[unique_id] = ret
        return ret


class ExecutionList:
    """ComfyUI's ``ExecutionList`` (topological sort with its "UX friendly" pick of the next node)."""

    def __init__(
        self, prompt: dict[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]
    ) -> None:
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}

    def add_node(self, node_id: str) -> None:
        node_ids = [node_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            unique_id = node_ids.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.block_count[unique_id] = 0
            self.blocking[unique_id] = {}
            for value in self.prompt[unique_id]["inputs"].values():
                if is_link(value):
                    from_id, socket = value
                    if not self.is_cached(from_id):
                        node_ids.append(from_id)
                    links.append((from_id, socket, unique_id))
        for from_id, socket, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = {}
                    self.block_count[to_id] += 1
                self.blocking[from_id][to_id][socket] = True

    def is_empty(self) -> bool:
        return not self.pending

    def next_node(self) -> str | None:
        """The node to run next, or None for a dependency cycle."""
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for n in ready:
            if self.is_output(n):
                return n
        for n in ready:
            if any(self.is_output(b) for b in self.blocking[n]):
                return n
        for n in ready:
            for b in self.blocking[n]:
                if any(self.is_output(b1) for b1 in self.blocking.get(b, {})):
                    return n
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id, {}):
            self.block_count[blocked] -= 1

    def nodes(self) -> list[str]:
        return list(self.pending)


def node_signatures(
    prompt: dict[str, Any], is_changed: Callable[[str, dict[str, Any]], Any], with_id: Callable[[str], bool]
) -> dict[str, str]:
    """Content hash per node: class, IS_CHANGED, widget values and, recursively, the linked ancestors."""
    sigs: dict[str, str] = {}
    visiting: set[str] = set()

    def sig(node_id: Any) -> str:
        key = str(node_id)
        if node_id not in prompt or not isinstance(prompt[node_id], dict):
            return f"missing:{key}:{id(prompt)}"
        if key in sigs:
            return sigs[key]
        if key in visiting:
            return f"cycle:{key}:{id(prompt)}"
        visiting.add(key)
        node = prompt[node_id]
        inputs = node.get("inputs") or {}
        parts: list[Any] = [node.get("class_type"), is_changed(key, node)]
        if with_id(key):
            parts.append(key)
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value):
                parts.append((name, "LINK", sig(value[0]), value[1]))
            else:
                parts.append((name, value))
        digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()
        visiting.discard(key)
        sigs[key] = digest
        return digest

    for node_id in prompt:
        sig(node_id)
    return sigs


def descendants(prompt: dict[str, Any], roots: set[str]) -> set[str]:
    """``roots`` plus every node that (transitively) takes an input from one of them."""
    out = set(roots)
    changed = True
    while changed:
        changed = False
        for node_id, node in prompt.items():
            if node_id in out:
                continue
            for value in (node.get("inputs") or {}).values():
                if is_link(value) and str(value[0]) in out:
                    out.add(node_id)
                    changed = True
                    break
    return out
