"""Every comfyflow metric, defined once: name, kind, labels, buckets, and the label values known in advance.

Counters and histograms are the fleet's totals, kept in one Redis hash (``{prefix}:metrics``): every process
(API or worker, on any machine) adds its increments there, and job transitions record a fact atomically with
the transition (``core/lua/lib.lua: fact``) that ``core/recorder.py`` folds in. Gauges (queue depth, jobs in
progress, slots, backend health) are read live at scrape time. So any API process answers ``/metrics`` with the
numbers of the whole fleet, and Prometheus scrapes one target (see ``deploy/prometheus/README.md``).

Naming follows ``comfyflow_<noun>_<unit>``; durations are seconds; label values are bounded sets.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from comfyflow.errors import ComfyflowError, RenderError

#: The Prometheus text format generate_latest writes (0.0.4 is what every Prometheus 2.x and 3.x parses).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "histogram", "gauge"]

# --- label vocabularies -----------------------------------------------------------------------------------------

ROLES = ("free", "pro", "internal", "unknown")
PRIORITIES = ("high", "normal", "low")
FINAL_STATES = ("succeeded", "failed", "canceled")
PHASES = ("queue_wait", "render", "store", "total")
#: Image size classes for the latency SLO (images <= 2 MP); ``unknown`` for raw graphs without a latent size.
SIZES = ("le_2mp", "gt_2mp", "unknown")
TWO_MP = 2 * 1024 * 1024
WEBHOOK_EVENTS = ("job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled")
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed", "refused")
NO_ERROR = "none"


def _codes(cls: type[ComfyflowError]) -> set[str]:
    out = {cls.code}
    for sub in cls.__subclasses__():
        out |= _codes(sub)
    return out


#: Every error class a job can end with: the render errors' codes and the ones the worker makes up.
ERROR_CLASSES: tuple[str, ...] = tuple(
    sorted(_codes(RenderError) | {"VALIDATION_ERROR", "INTERNAL_ERROR", "WORKER_SHUTDOWN", "LEASE_EXPIRED"})
)
#: Failures caused by the request itself; the job-failure SLO leaves them out (``deploy/prometheus`` uses the
#: same list, checked by ``tests/deploy/test_rules.py``).
USER_ERROR_CLASSES: tuple[str, ...] = (
    "VALIDATION_ERROR", "INVALID_GRAPH", "NO_OUTPUTS", "OUTPUT_TOO_LARGE", "NOT_FOUND", "FORBIDDEN",
)  # fmt: skip

# --- buckets ------------------------------------------------------------------------------------------------------

#: Job phases: renders take 1-600 s; 20 and 40 are bounds so the P95/P99 objectives are exact bucket edges.
DURATION_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 40, 60, 90, 120, 180, 300, 450, 600)
FIRST_PROGRESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Spec:
    """One metric. ``known`` lists label values emitted as 0 before their first increment, so that ``rate()``
    sees the first failure of a kind (a series that appears at 1 would hide its first increment)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    known: tuple[tuple[str, ...], ...] = field(default=(), repr=False)


def _product(*parts: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    out: list[tuple[str, ...]] = [()]
    for part in parts:
        out = [(*prefix, value) for prefix in out for value in part]
    return tuple(out)


_FINISHED_KNOWN = tuple(
    (state, role, err)
    for role in ROLES
    for state, err in [("succeeded", NO_ERROR), ("canceled", NO_ERROR)] + [("failed", c) for c in ERROR_CLASSES]
)

# --- fleet totals (Redis) -----------------------------------------------------------------------------------------

JOBS_SUBMITTED = Spec(
    "comfyflow_jobs_submitted_total", "counter", "Jobs accepted into the queue.", ("role", "priority"),
    known=_product(ROLES, PRIORITIES),
)  # fmt: skip
JOBS_FINISHED = Spec(
    "comfyflow_jobs_finished_total", "counter",
    "Jobs that reached a final state, by state, owner role and error class (none unless failed).",
    ("state", "role", "error_class"), known=_FINISHED_KNOWN,
)  # fmt: skip
JOB_RETRIES = Spec(
    "comfyflow_job_retries_total", "counter", "Attempts that ended in a transient error and were retried.",
    ("error_class",), known=_product(ERROR_CLASSES),
)  # fmt: skip
JOB_DURATION = Spec(
    "comfyflow_job_duration_seconds", "histogram",
    "Phases of succeeded jobs: queue_wait (submit to GPU slot), render, store, total (submit to done).",
    ("phase", "size"), DURATION_BUCKETS, known=_product(PHASES, SIZES),
)  # fmt: skip
FIRST_PROGRESS = Spec(
    "comfyflow_job_first_progress_seconds", "histogram",
    "From a render's start (GPU slot taken, prompt sent) to the backend's first progress event.",
    (), FIRST_PROGRESS_BUCKETS, known=((),),
)  # fmt: skip
BACKEND_BUSY = Spec(
    "comfyflow_backend_busy_seconds_total", "counter",
    "Seconds a backend spent executing comfyflow's prompts (first event to outputs fetched); rate() = utilization.",
    ("backend",),
)  # fmt: skip
BACKEND_FAILURES = Spec(
    "comfyflow_backend_failures_total", "counter", "Failed attempts by backend and error class.",
    ("backend", "error_class"),
)  # fmt: skip
STORAGE_BYTES = Spec(
    "comfyflow_storage_written_bytes_total", "counter", "Bytes of artifacts and metadata written to storage.",
    known=((),),
)  # fmt: skip
STORAGE_ERRORS = Spec(
    "comfyflow_storage_errors_total", "counter", "Storage writes that failed or did not verify (each retry counts).",
    known=((),),
)  # fmt: skip
HTTP_REQUESTS = Spec(
    "comfyflow_http_requests_total", "counter", "API requests by route pattern, method and status code.",
    ("route", "method", "status"),
)  # fmt: skip
HTTP_DURATION = Spec(
    "comfyflow_http_request_duration_seconds", "histogram",
    "API latency to the response headers, by route pattern and method.", ("route", "method"), HTTP_BUCKETS,
)  # fmt: skip
WEBHOOK_DELIVERIES = Spec(
    "comfyflow_webhook_deliveries_total", "counter",
    "Webhook delivery attempts by event type and outcome (delivered, retrying, failed for good, refused target).",
    ("event", "outcome"), known=_product(WEBHOOK_EVENTS, WEBHOOK_OUTCOMES),
)  # fmt: skip

# --- live gauges (read at scrape time) --------------------------------------------------------------------------

QUEUE_DEPTH = Spec("comfyflow_queue_depth", "gauge", "Jobs waiting in the queue, by priority.", ("priority",))
QUEUE_DELAYED = Spec("comfyflow_queue_delayed_jobs", "gauge", "Jobs waiting out a retry backoff.")
JOBS_IN_PROGRESS = Spec("comfyflow_jobs_in_progress", "gauge", "Jobs claimed by a worker and not finished.")
WORKERS_ALIVE = Spec("comfyflow_workers_alive", "gauge", "Worker processes that sent a heartbeat recently.")
BACKEND_CAPACITY = Spec("comfyflow_backend_capacity_slots", "gauge",
                        "GPU slots per backend: prompts it may hold now (more than its slots while renders are fast).",
                        ("backend",))  # fmt: skip
BACKEND_SLOTS_IN_USE = Spec("comfyflow_backend_slots_in_use", "gauge", "GPU slots leased per backend.", ("backend",))
BACKEND_UP = Spec("comfyflow_backend_up", "gauge", "1 when the backend answered its health probe.", ("backend",))
BACKEND_QUEUE = Spec(
    "comfyflow_backend_queue_depth", "gauge", "Prompts in the backend's own queue at its last probe.", ("backend",)
)
WEBHOOKS_PENDING = Spec("comfyflow_webhook_pending_deliveries", "gauge", "Webhook deliveries not yet delivered.")
STREAM_KINDS = ("sse", "ws")
#: How a progress stream ended (``refused``: over its owner's cap; ``idle``/``lifetime``: closed by the server,
#: the client resumes with Last-Event-ID; ``done``: after the job's last event; ``closed``: the client left).
STREAM_OUTCOMES = ("refused", "done", "idle", "lifetime", "closed")
STREAMS_OPEN = Spec("comfyflow_event_streams_open", "gauge", "Progress streams open now, by kind.", ("kind",))
STREAMS = Spec(
    "comfyflow_event_streams_total", "counter", "Progress streams that ended or were refused, by kind and outcome.",
    ("kind", "outcome"), known=_product(STREAM_KINDS, STREAM_OUTCOMES),
)  # fmt: skip

ALL: tuple[Spec, ...] = (
    JOBS_SUBMITTED, JOBS_FINISHED, JOB_RETRIES, JOB_DURATION, FIRST_PROGRESS, BACKEND_BUSY, BACKEND_FAILURES,
    STORAGE_BYTES, STORAGE_ERRORS, HTTP_REQUESTS, HTTP_DURATION, WEBHOOK_DELIVERIES, QUEUE_DEPTH, QUEUE_DELAYED,
    JOBS_IN_PROGRESS, WORKERS_ALIVE, BACKEND_CAPACITY, BACKEND_SLOTS_IN_USE, BACKEND_UP, WEBHOOKS_PENDING,
    BACKEND_QUEUE, STREAMS_OPEN, STREAMS,
)  # fmt: skip
BY_NAME = {s.name: s for s in ALL}


def per_backend(spec: Spec, backends: Iterable[str]) -> list[tuple[str, ...]]:
    """Series known once the configured backends are: emitted at 0 like ``Spec.known``."""
    if spec is BACKEND_BUSY:
        return [(b,) for b in backends]
    if spec is BACKEND_FAILURES:
        return [(b, e) for b in backends for e in ERROR_CLASSES]
    return []


def size_class(request: dict[str, Any]) -> str:
    """The SLO size class of a job request body: le_2mp / gt_2mp by width x height, unknown for a raw graph
    without an ``EmptyLatentImage``-like node."""
    if "width" in request and "height" in request:
        pixels = int(request["width"]) * int(request["height"])
    else:
        sizes = [
            node["inputs"]["width"] * node["inputs"]["height"]
            for node in (request.get("workflow") or {}).values()
            if isinstance(node, dict)
            and isinstance((node.get("inputs") or {}).get("width"), int)
            and isinstance(node["inputs"].get("height"), int)
        ]
        if not sizes:
            return "unknown"
        pixels = max(sizes)
    return "le_2mp" if pixels <= TWO_MP else "gt_2mp"


# --- the Redis hash: one field per series (counters) or per bucket (histograms) -------------------------------

SEP = "|"


def _clean(value: str) -> str:
    return str(value).replace(SEP, "_")[:200]


def field_key(spec: Spec, labels: tuple[str, ...], part: str = "") -> str:
    """The hash field of one series: ``name[:part]|v1|v2``; ``part`` is ``b<i>`` (bucket i) or ``sum``."""
    if len(labels) != len(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, got {labels!r}")
    try:
        return _joined(spec.name, labels, part)
    except TypeError:  # a label value that is not hashable (a fact's JSON may hold anything): built, not kept
        return _joined.__wrapped__(spec.name, labels, part)


@functools.lru_cache(maxsize=10_000)  # the API counts every request under a few route, method and status labels
def _joined(name: str, labels: tuple[str, ...], part: str) -> str:
    return SEP.join([f"{name}:{part}" if part else name, *(_clean(v) for v in labels)])


def bucket_index(spec: Spec, value: float) -> int:
    """Index of the first bucket whose upper bound holds ``value``; len(buckets) is the +Inf bucket."""
    for i, bound in enumerate(spec.buckets):
        if value <= bound:
            return i
    return len(spec.buckets)


def increments(spec: Spec, labels: tuple[str, ...], value: float = 1.0) -> dict[str, float]:
    """Hash-field increments for one counter increment or one histogram observation."""
    if spec.kind == "counter":
        return {field_key(spec, labels): value}
    if spec.kind == "histogram":
        return {field_key(spec, labels, f"b{bucket_index(spec, value)}"): 1.0, field_key(spec, labels, "sum"): value}
    raise ValueError(f"{spec.name} is a gauge; gauges are read at scrape time, not recorded")


def _fmt_bound(bound: float) -> str:
    return repr(float(bound))


@dataclass
class _Series:
    buckets: list[float]
    total: float = 0.0


def families(
    totals: dict[str, float], gauges: dict[Spec, dict[tuple[str, ...], float]], *, backends: Iterable[str] = ()
) -> list[Metric]:
    """Metric families from the Redis totals (decoded hash) and the live gauges, known series included."""
    counters: dict[Spec, dict[tuple[str, ...], float]] = {}
    hists: dict[Spec, dict[tuple[str, ...], _Series]] = {}
    for spec in ALL:
        known = list(spec.known) + per_backend(spec, backends)
        if spec.kind == "counter":
            counters[spec] = {labels: 0.0 for labels in known}
        elif spec.kind == "histogram":
            hists[spec] = {labels: _Series([0.0] * (len(spec.buckets) + 1)) for labels in known}
    for key, value in totals.items():
        head, *parts = key.split(SEP)
        name, _, part = head.partition(":")
        found = BY_NAME.get(name)
        if found is None or len(parts) != len(found.labels):
            continue  # written by another comfyflow version
        if found.kind == "counter" and not part:
            counters[found][tuple(parts)] = value
        elif found.kind == "histogram":
            series = hists[found].setdefault(tuple(parts), _Series([0.0] * (len(found.buckets) + 1)))
            if part == "sum":
                series.total = value
            elif part.startswith("b") and part[1:].isdigit() and int(part[1:]) < len(series.buckets):
                series.buckets[int(part[1:])] = value
    out: list[Metric] = []
    for spec, values in counters.items():
        fam = CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=spec.labels)
        for key_labels, value in sorted(values.items()):
            fam.add_metric(list(key_labels), value)
        out.append(fam)
    for spec, hvalues in hists.items():
        hfam = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
        for key_labels, series in sorted(hvalues.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for bound, count in zip([*spec.buckets, math.inf], series.buckets, strict=True):
                running += count
                cumulative.append(("+Inf" if bound == math.inf else _fmt_bound(bound), running))
            hfam.add_metric(list(key_labels), cumulative, series.total)
        out.append(hfam)
    for spec, gvalues in gauges.items():
        gfam = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for key_labels, value in sorted(gvalues.items()):
            gfam.add_metric(list(key_labels), value)
        out.append(gfam)
    return out


class _Families(Collector):
    def __init__(self, items: list[Metric]) -> None:
        self.items = items

    def collect(self) -> Iterator[Metric]:
        yield from self.items


def exposition(items: list[Metric]) -> bytes:
    """The Prometheus text exposition of ``items``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(items))
    return generate_latest(registry)
