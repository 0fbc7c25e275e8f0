"""What each role sees of a job, a pipeline run and an error (the rules; comfyflow/api/visibility.py applies
them to requests, comfyflow/core/webhooks to webhook payloads).

Tenants (FREE, PRO) see their job's state, progress, result (artifacts and seed), attempt and a typed error with a
human message. Where the job ran (backend URL, ComfyUI prompt id, Prefect flow run id, worker) and ComfyUI's own
error text (exception messages, traceback lines, server paths) are for INTERNAL callers only: they name hosts and
internals a tenant has no use for and should not learn.
"""

from __future__ import annotations

from typing import Any

#: Job fields only INTERNAL callers see.
INTERNAL_JOB_FIELDS = ("backend", "flow_run_id", "worker")
INTERNAL_RESULT_FIELDS = ("backend", "prompt_id", "adopted")

#: The human message a tenant reads for each error code; the codes are stable, the text explains and advises.
MESSAGES: dict[str, str] = {
    "INVALID_GRAPH": "The request cannot run on the available backends: {summary}.",
    "EXECUTION_ERROR": "Rendering failed at {where}; the same request would fail again.",
    "OUT_OF_MEMORY": "The render ran out of GPU memory; try a smaller size or fewer images per job.",
    "BACKEND_UNAVAILABLE": "No render backend could take the job; retry it later.",
    "STALLED": "The render stopped making progress and was abandoned; retry it.",
    "DEVICE_ERROR": "The render backend had a device failure; retry the job.",
    "OUTPUT_TOO_LARGE": "An output file was larger than this service accepts.",
    "NO_OUTPUTS": "The render finished without producing an output file.",
    "BAD_OUTPUT": "The render backend returned an output that is not a valid image; nothing was stored. Retry it.",
    "WORKER_LOST": "The worker running the job stopped answering; the job was handed to another one.",
    "STORAGE_ERROR": "The result could not be stored; retry the job.",
    "CANCELED": "The job was canceled.",
    "ATTEMPTS_EXHAUSTED": "The job failed on every attempt; retry it later.",
    "LEASE_EXPIRED": "The worker running the job stopped answering too often; retry the job.",
    "WORKER_SHUTDOWN": "The worker running the job shut down; the job is queued again.",
    "INTERNAL_ERROR": "An internal error ended the job; it was logged. Retry it, or quote the job id to support.",
    "PIPELINE_ERROR": "The pipeline failed; its steps say which one and why.",
}
#: Codes whose stored message is about the caller's own request (safe and useful to show as it is).
OWN_INPUT_CODES = frozenset({"VALIDATION_ERROR", "NOT_FOUND", "FORBIDDEN"})
#: Keys of a per-node error ComfyUI reports that speak about the request (which input, which value, which
#: choices), never about the server.
NODE_ERROR_KEYS = ("type", "message", "details", "input_name")


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _nodes(nodes: Any) -> list[dict[str, Any]]:
    out = []
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict):
            continue
        errors = [{k: e[k] for k in NODE_ERROR_KEYS if k in e} for e in node.get("errors") or [] if isinstance(e, dict)]
        out.append({"node_id": node.get("node_id"), "class_type": node.get("class_type"), "errors": errors})
    return out


def _summary(nodes: list[dict[str, Any]]) -> str:
    parts = []
    for node in nodes:
        for err in node["errors"]:
            text = err.get("message") or err.get("type") or "invalid"
            if err.get("details") and str(err["details"]) not in str(text):
                text = f"{text}: {err['details']}"
            parts.append(f"node {node['node_id']} ({node['class_type']}): {text}")
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "") if parts else "rejected"


def public_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error as a tenant sees it: the code, a human message, and only details about its own request."""
    if not error:
        return error
    code = str(error.get("code") or "INTERNAL_ERROR")
    details = as_dict(error.get("details"))
    out: dict[str, Any] = {"code": code, "transient": bool(error.get("transient"))}
    if code in OWN_INPUT_CODES:
        out.update(message=error.get("message") or code, details=error.get("details"))
        return out
    if code == "STEP_FAILED":  # a pipeline step: comfyflow's own words, unless they quote the step's job error
        step_error = as_dict(details.get("error"))
        if not step_error:
            out.update(message=error.get("message") or code, details=details)
            return out
        inner = public_error(step_error) or {}
        step = details.get("step")
        out.update(message=f"Step {step!r} failed: {inner.get('message')}",
                   details={"step": step, "job_id": details.get("job_id"), "error": inner})  # fmt: skip
        return out
    public: dict[str, Any] = {}
    fmt: dict[str, str] = {}
    if code == "INVALID_GRAPH":
        public = {"nodes": _nodes(details.get("nodes"))}
        for name in ("missing", "available_models", "available"):  # what is missing, and what exists instead
            if name in details:
                public[name] = details[name]
        reason = as_dict(details.get("error")).get("message")
        summary = _summary(public["nodes"]) if public["nodes"] else str(reason or "a model or node it needs is missing")
        checkpoints = as_dict(details.get("available_models")).get("checkpoints") or details.get("available")
        if isinstance(checkpoints, list) and not public["nodes"]:
            summary += f". Checkpoints that exist: {', '.join(map(str, checkpoints[:20])) or '(none)'}"
        fmt["summary"] = summary
    elif code in ("EXECUTION_ERROR", "OUT_OF_MEMORY"):
        public = {k: details.get(k) for k in ("node_id", "node_type", "exception_type") if details.get(k)}
        node = details.get("node_type") or "a node"
        fmt["where"] = f"node {details.get('node_id')} ({node})" if details.get("node_id") else str(node)
    template = MESSAGES.get(code, "The job failed ({code}).")
    out.update(message=template.format(code=code, **fmt), details=public)
    return out


def redact_job(data: dict[str, Any]) -> dict[str, Any]:
    """A dumped job without its internals (in place): what FREE and PRO callers see."""
    for name in INTERNAL_JOB_FIELDS:
        data.pop(name, None)
    if isinstance(data.get("result"), dict):
        for name in INTERNAL_RESULT_FIELDS:
            data["result"].pop(name, None)
    if "error" in data:
        data["error"] = public_error(data.get("error"))
    return data


def redact_run(data: dict[str, Any]) -> dict[str, Any]:
    """A dumped pipeline run or batch without its internals (in place)."""
    data.pop("flow_run_id", None)
    if data.get("error"):
        data["error"] = public_error(data["error"])
        if data.get("message"):  # the run's message repeats its error's
            data["message"] = data["error"]["message"]
    return data
