"""The backend pool's vocabulary: what an operator says about a backend (spec), what the pool knows of it
(state: health and capabilities), and what a graph needs of one (requirement)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

from comfyflow.errors import ConfigError, ExecutionFailed
from comfyflow.plugins.comfyui.validate import LOADER_FOLDERS
from comfyflow.plugins.protocols import Capabilities

LABEL = re.compile(r"^[A-Za-z0-9_.:=+-]{1,64}$")
#: A job label ``backend:<label>`` sends the job only to backends carrying ``<label>``.
JOB_LABEL_PREFIX = "backend:"
#: Text of a fatal device failure (the GPU is gone or corrupted), as opposed to a job's own error.
DEVICE_ERROR = re.compile(
    r"CUDA error|CUDA_ERROR|cudaError|CUBLAS_STATUS|CUDNN_STATUS|device-side assert|illegal memory access|"
    r"device lost|DEVICE_LOST|device not ready|HIP error|hipError|NCCL error|no CUDA GPUs are available|"
    r"CUDA driver",
    re.IGNORECASE,
)


class Health(StrEnum):
    UNKNOWN = "unknown"  # not probed yet: routable
    UP = "up"
    DOWN = "down"  # failing probes: used only when no healthy backend can run a job
    QUARANTINED = "quarantined"  # a fatal device error: never used until it passes health checks again


def backend_id(url: str) -> str:
    """The short id of a backend (also the suffix of its slot key)."""
    return hashlib.sha1(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BackendSpec:
    """What an operator said about a backend."""

    url: str
    capacity: int
    labels: tuple[str, ...] = ()
    source: str = "settings"  # or "runtime" (registered over the API)
    enabled: bool = True
    registered_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "labels": list(self.labels)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> BackendSpec:
        data = json.loads(raw)
        return cls(**{**data, "labels": tuple(data.get("labels") or ())})


def check_labels(labels: Any) -> tuple[str, ...]:
    bad = [lab for lab in labels if not isinstance(lab, str) or not LABEL.match(lab)]
    if bad:
        raise ConfigError(f"backend labels {bad!r} are invalid; expected 1-64 of A-Z a-z 0-9 _ . : = + -")
    return tuple(dict.fromkeys(labels))


def parse_backend(entry: str, default_capacity: int) -> BackendSpec:
    """One ``COMFYFLOW_BACKENDS`` entry: ``http://gpu1:8188`` or ``http://gpu1:8188#slots=4&labels=a,b``."""
    base, _, fragment = entry.partition("#")
    options = parse_qs(fragment, keep_blank_values=True)
    unknown = set(options) - {"slots", "labels"}
    if unknown:
        raise ConfigError(f"COMFYFLOW_BACKENDS entry {entry!r} has unknown options {sorted(unknown)}; "
                          "expected #slots=N&labels=a,b")  # fmt: skip
    try:
        capacity = int(options.get("slots", [default_capacity])[0])
    except ValueError:
        capacity = 0
    if not 1 <= capacity <= 64:
        raise ConfigError(f"COMFYFLOW_BACKENDS entry {entry!r}: slots must be an integer in 1..64")
    labels = [lab for part in options.get("labels", []) for lab in part.split(",") if lab]
    return BackendSpec(base.rstrip("/"), capacity, check_labels(labels))


@dataclass(frozen=True)
class Requirement:
    """What a graph needs of a backend: node classes, model files ((folder or None, name)) and labels."""

    node_classes: frozenset[str]
    models: frozenset[tuple[str | None, str]]
    labels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BackendState:
    """One backend as the pool sees it: the operator's spec, its probed health and its capabilities."""

    spec: BackendSpec
    health: Health = Health.UNKNOWN
    fails: int = 0
    oks: int = 0
    checked_at: float | None = None
    changed_at: float | None = None
    latency_s: float | None = None
    queue_remaining: int | None = None
    detail: str = ""
    reason: str = ""
    models: dict[str, list[str]] | None = None  # folder -> file names; None until described
    node_classes: frozenset[str] | None = None
    described_at: float | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def usable(self) -> bool:
        """Healthy enough to get new jobs."""
        return self.spec.enabled and self.health in (Health.UP, Health.UNKNOWN)

    @property
    def last_resort(self) -> bool:
        """Failing probes, but still worth a try when no healthy backend can run a job."""
        return self.spec.enabled and self.health is Health.DOWN

    def capabilities(self) -> Capabilities | None:
        if self.models is None or self.node_classes is None:
            return None
        return Capabilities(node_classes=self.node_classes, models=self.models)

    def missing(self, req: Requirement) -> dict[str, list[str]] | None:
        """What ``req`` needs that this backend lacks (empty when it can run it), or None when not described."""
        out: dict[str, list[str]] = {}
        labels = sorted(req.labels - set(self.spec.labels))
        if labels:
            out["labels"] = labels
        if self.models is None or self.node_classes is None:
            return out or None
        classes = sorted(req.node_classes - self.node_classes)
        if classes:
            out["node_classes"] = classes
        every = {name for names in self.models.values() for name in names}
        models = sorted(n for f, n in req.models if n not in (self.models.get(f) or () if f else every))
        if models:
            out["models"] = models
        return out

    def can_run(self, req: Requirement) -> bool | None:
        missing = self.missing(req)
        return None if missing is None else not missing

    def public(self, in_use: int | None = None) -> dict[str, Any]:
        """The backend as ``GET /api/v1/backends`` shows it."""
        return {
            "id": backend_id(self.url), "url": self.url, "capacity": self.spec.capacity, "in_use": in_use,
            "labels": list(self.spec.labels), "source": self.spec.source, "enabled": self.spec.enabled,
            "health": self.health.value, "routable": self.usable, "consecutive_failures": self.fails,
            "consecutive_passes": self.oks, "checked_at": self.checked_at, "changed_at": self.changed_at,
            "latency_s": self.latency_s, "queue_remaining": self.queue_remaining, "detail": self.detail,
            "reason": self.reason, "models": self.models, "described_at": self.described_at,
            "node_classes": len(self.node_classes) if self.node_classes is not None else None,
        }  # fmt: skip


@dataclass(frozen=True)
class PoolView:
    """A process's copy of the pool, in routing order (settings first, then registrations, oldest first)."""

    backends: dict[str, BackendState]
    version: int = 0
    model_names: frozenset[str] = field(default=frozenset())

    def get(self, url: str) -> BackendState | None:
        return self.backends.get(url)

    def usable(self, url: str) -> bool:
        state = self.backends.get(url)
        return state is not None and state.usable


def requirement_for(graph: dict[str, Any], *, job_labels: list[str], known_models: frozenset[str]) -> Requirement:
    """The node classes, models and backend labels a graph needs. A model is an input of a known loader, or
    any string input naming a model file some backend of the pool has."""
    classes: set[str] = set()
    models: set[tuple[str | None, str]] = set()
    for node in graph.values():
        cls = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(cls, str):
            continue
        classes.add(cls)
        for name, value in (node.get("inputs") or {}).items():
            if not isinstance(value, str):
                continue
            folder = LOADER_FOLDERS.get((cls, name))
            if folder is not None:
                models.add((folder, value))
            elif value in known_models:
                models.add((None, value))
    labels = {lab[len(JOB_LABEL_PREFIX) :] for lab in job_labels if lab.startswith(JOB_LABEL_PREFIX)}
    return Requirement(frozenset(classes), frozenset(models), frozenset(labels))


def is_device_error(exc: BaseException) -> bool:
    """A node failed because the device itself failed (CUDA error, device lost): the backend is unfit."""
    return isinstance(exc, ExecutionFailed) and bool(DEVICE_ERROR.search(exc.message))
