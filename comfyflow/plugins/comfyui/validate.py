"""Graphs checked against ``/object_info`` before they are queued, and ComfyUI's own 400s read the same way.

Both produce ``GraphInvalid`` with ``details = {"error": {...}, "nodes": [{node_id, class_type, errors}]}``
where each error has ``type``, ``message``, ``details`` and ``input_name`` (and ``available`` for a combo
value that is not in the list, e.g. a missing model).
Bounds and value types are left to ComfyUI's own validation.
"""

from __future__ import annotations

from typing import Any

from comfyflow.errors import GraphInvalid
from comfyflow.plugins.protocols import Capabilities

from .outputs import as_dict

#: Loader inputs whose combo lists model files, and the ComfyUI model folder they come from.
LOADER_FOLDERS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
}
#: Combo flags meaning "the node checks the value itself" (uploads, lists fetched at run time).
_SELF_CHECKED = ("image_upload", "video_upload", "audio_upload", "remote", "multiselect")
_SHOWN = 20


def combo_options(spec: Any) -> list[Any] | None:
    """The options of a combo input spec in either encoding, or None when the input is not a combo.

    Classic: ``[["a", "b"], {...}]``. V3: ``["COMBO", {"options": ["a", "b"], ...}]``.
    """
    if not isinstance(spec, list | tuple) or not spec:
        return None
    if isinstance(spec[0], list | tuple):
        return list(spec[0])
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options") or [])
    return None


def _err(type_: Any, message: Any, details: Any = "", input_name: Any = None, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "input_name": input_name, **extra}


def _flags(spec: Any) -> dict[str, Any]:
    return as_dict(spec[1]) if isinstance(spec, list | tuple) and len(spec) > 1 else {}


def _input_specs(info: dict[str, Any], section: str) -> dict[str, Any]:
    return as_dict(as_dict(info.get("input")).get(section))


def capabilities_from_object_info(object_info: dict[str, Any]) -> Capabilities:
    """Node classes, model files per folder (from the loaders' combos), samplers and schedulers."""
    models: dict[str, list[str]] = {}
    for (cls, name), folder in LOADER_FOLDERS.items():
        options = combo_options(_input_specs(object_info.get(cls) or {}, "required").get(name))
        if options is None:
            continue
        known = models.setdefault(folder, [])
        known.extend(str(o) for o in options if str(o) not in known)
    ksampler = _input_specs(object_info.get("KSampler") or {}, "required")
    return Capabilities(
        node_classes=frozenset(object_info),
        models=models,
        samplers=[str(o) for o in combo_options(ksampler.get("sampler_name")) or []],
        schedulers=[str(o) for o in combo_options(ksampler.get("scheduler")) or []],
    )


def is_link(value: Any) -> bool:
    """API-format links are ``["<node_id>", <output index>]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _shown(options: list[Any]) -> str:
    names = ", ".join(str(o) for o in options[:_SHOWN]) or "(none)"
    return names + (f", ... ({len(options) - _SHOWN} more)" if len(options) > _SHOWN else "")


def _combo_error(cls: str, name: str, value: Any, options: list[Any]) -> dict[str, Any]:
    folder = LOADER_FOLDERS.get((cls, name))
    if folder:
        message = f"model {value!r} not found in {folder}; available: {_shown(options)}"
    else:
        message = f"value {value!r} not in list; expected one of: {_shown(options)}"
    return _err("value_not_in_list", message, f"{name}: {value!r}", name, available=[str(o) for o in options])


def _check_node(node_id: str, node: Any, graph: dict[str, Any], object_info: dict[str, Any]) -> list[dict]:
    if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
        return [_err("invalid_prompt", "node has no class_type")]
    cls = node["class_type"]
    info = object_info.get(cls)
    if not isinstance(info, dict):
        return [_err("unknown_node", f"node class {cls!r} is not installed on this backend", cls)]
    inputs = as_dict(node.get("inputs"))
    required, optional = _input_specs(info, "required"), _input_specs(info, "optional")
    errors: list[dict[str, Any]] = []
    for name, spec in required.items():
        dynamic = isinstance(spec, list | tuple) and str(spec[0] if spec else "").startswith("COMFY_")
        if name not in inputs and not dynamic:
            errors.append(_err("required_input_missing", f"required input {name!r} is missing", name, name))
    for name, value in inputs.items():
        if is_link(value):
            source = graph.get(str(value[0]))
            if source is None:
                message = f"input {name!r} links to node {value[0]!r}, which is not in the graph"
                errors.append(_err("missing_linked_node", message, f"{name}: {value!r}", name))
                continue
            outputs = as_dict(object_info.get(str(as_dict(source).get("class_type")))).get("output")
            if isinstance(outputs, list) and not 0 <= value[1] < len(outputs):
                message = (
                    f"input {name!r} links to output {value[1]} of node {value[0]!r}, "
                    f"which has {len(outputs)} output(s)"
                )
                errors.append(_err("bad_link", message, f"{name}: {value!r}", name))
            continue
        spec = required.get(name, optional.get(name))
        options = combo_options(spec)
        if options is None or any(_flags(spec).get(flag) for flag in _SELF_CHECKED):
            continue
        if value not in options:
            errors.append(_combo_error(cls, name, value, options))
    return errors


def check_graph(graph: Any, object_info: dict[str, Any]) -> list[dict[str, Any]]:
    """Every problem found, as ``[{node_id, class_type, errors}]``; empty when the graph looks runnable."""
    if not isinstance(graph, dict) or not graph:
        return [
            {
                "node_id": None,
                "class_type": None,
                "errors": [_err("prompt_no_outputs", "the graph has no nodes")],
            }
        ]
    problems = []
    for node_id, node in graph.items():
        errors = _check_node(str(node_id), node, graph, object_info)
        if errors:
            cls = node.get("class_type") if isinstance(node, dict) else None
            problems.append({"node_id": str(node_id), "class_type": cls, "errors": errors})
    return problems


def _summary(nodes: list[dict[str, Any]]) -> str:
    parts = []
    for node in nodes:
        for err in node.get("errors") or []:
            where = (
                f"node {node.get('node_id')} ({node.get('class_type')})" if node.get("node_id") else "graph"
            )
            detail = err.get("details")
            text = err.get("message") or err.get("type")
            if detail and str(detail) not in str(text) and err.get("type") != "value_not_in_list":
                text = f"{text}: {detail}"
            parts.append(f"{where}: {text}")
    shown = "; ".join(parts[:5])
    return shown + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")


def graph_invalid(
    nodes: list[dict[str, Any]], *, source: str, error: dict[str, Any] | None = None
) -> GraphInvalid:
    """One GraphInvalid for a list of per-node problems."""
    summary = _summary(nodes) or (error or {}).get("message") or "graph rejected"
    return GraphInvalid(f"{source}: {summary}", details={"error": error or {}, "nodes": nodes})


def rejected_by_server(body: Any, *, status: int) -> GraphInvalid:
    """ComfyUI's ``{error, node_errors}`` answer (400, or a 200 with dropped outputs) as one GraphInvalid."""
    body = as_dict(body)
    raw_error = as_dict(body.get("error"))
    error = {k: raw_error.get(k) for k in ("type", "message", "details") if k in raw_error}
    nodes = []
    node_errors = as_dict(body.get("node_errors"))
    for node_id in node_errors:
        entry = as_dict(node_errors[node_id])
        errors = []
        for err in entry.get("errors") or []:
            if not isinstance(err, dict):
                continue
            extra = as_dict(err.get("extra_info"))
            errors.append(
                _err(err.get("type"), err.get("message"), err.get("details"), extra.get("input_name"))
            )
        nodes.append(
            {
                "node_id": str(node_id),
                "class_type": entry.get("class_type"),
                "errors": errors,
                "dependent_outputs": entry.get("dependent_outputs") or [],
            }
        )
    summary = _summary(nodes)
    head = error.get("message") or "graph rejected"
    if error.get("details") and not nodes:
        head = f"{head} ({error['details']})"
    what = "ComfyUI rejected the graph" if status >= 400 else "ComfyUI would drop some outputs of the graph"
    return GraphInvalid(
        f"{what}: {summary or head}", details={"error": error, "nodes": nodes, "status": status}
    )
