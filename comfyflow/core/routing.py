"""Which backends may run a job: healthy ones that have its models, node classes and labels, least loaded first.

The pool (``core/pool.py``) says what each backend is and how it is; this module matches a graph against it.
A backend that failed the job's previous attempt is avoided when another can run it. When no healthy backend
can, a backend whose probes fail is tried as a last resort (never a quarantined or disabled one). When no
backend of the pool has what the job needs, the job fails at once with the models that do exist; when the only
ones that have it are down, the attempt fails as transient and the job is retried later.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from comfyflow.core.pool import BackendPool, BackendState, Requirement
from comfyflow.core.slots import MAX_POLL_SECONDS, SlotLease, SlotPool
from comfyflow.errors import BackendUnavailable, ComfyflowError, GraphInvalid, NoHealthyBackend
from comfyflow.plugins.protocols import Capabilities


async def described(pool: BackendPool, *, refresh: bool = False) -> dict[str, BackendState]:
    """The pool's backends, with capabilities fetched in this process for usable ones the leader has not
    described yet (or for all usable ones with ``refresh``)."""
    states = dict((await pool.view(fresh=refresh)).backends)
    todo = [u for u, s in states.items() if s.usable and (refresh or s.models is None)]
    if todo:
        found = await asyncio.gather(
            *(pool.backend(u).capabilities(refresh=refresh) for u in todo), return_exceptions=True
        )
        for url, caps in zip(todo, found, strict=True):
            if isinstance(caps, Capabilities):
                states[url] = replace(states[url], models=caps.models, node_classes=caps.node_classes)
    return states


def default_checkpoint_source(states: dict[str, BackendState], labels: frozenset[str]) -> Capabilities | None:
    """Capabilities of the backend whose first checkpoint a request without ``model`` gets: the first usable
    backend (in pool order) with the job's labels and at least one checkpoint."""
    for state in states.values():
        caps = state.capabilities()
        if state.usable and caps is not None and labels <= set(state.spec.labels) and caps.models.get("checkpoints"):
            return caps
    return next((c for s in states.values() if s.usable and (c := s.capabilities()) is not None), None)


def candidates(states: dict[str, BackendState], req: Requirement, *, avoid: str | None) -> list[str]:
    """Backends for a job, in pool order (the slot script then takes the least loaded with room).

    Raises:
        GraphInvalid: no backend of the pool can run it (permanent).
        BackendUnavailable: the backends that could are down, quarantined or unreachable (transient).
    """
    able = [u for u, s in states.items() if s.usable and s.can_run(req) is True]
    if not able:
        able = [u for u, s in states.items() if s.last_resort and s.can_run(req) is True]
    if not able:
        raise unroutable(states, req)
    others = [u for u in able if u != avoid]
    return others or able


def unroutable(states: dict[str, BackendState], req: Requirement) -> ComfyflowError:
    enabled = {u: s for u, s in states.items() if s.spec.enabled}
    maybe = {u: s for u, s in enabled.items() if s.can_run(req) is not False}
    if not enabled or maybe:
        why = ", ".join(f"{u} ({s.health.value}{': ' + s.reason[:120] if s.reason else ''})" for u, s in maybe.items())
        return NoHealthyBackend(
            f"No healthy backend can run this job now; {'the ones that could: ' + why if why else 'the pool is empty'}"
            ". It is retried; check the backends with GET /api/v1/backends.",
            details={"backends": list(maybe)},
        )
    missing = {u: s.missing(req) or {} for u, s in enabled.items()}
    lacking: dict[str, set[str]] = {}
    for m in missing.values():
        for kind, names in m.items():
            lacking.setdefault(kind, set()).update(names)
    # What no backend has at all (a model only some lack is fine; the combination is what fails).
    nowhere = {
        k: sorted(n for n in v if all(n in (m.get(k) or ()) for m in missing.values())) for k, v in lacking.items()
    }
    available: dict[str, list[str]] = {}
    for s in enabled.values():
        for folder, names in (s.models or {}).items():
            known = available.setdefault(folder, [])
            known.extend(n for n in names if n not in known)
    parts = [f"{kind.replace('_', ' ')} {', '.join(map(repr, names))}" for kind, names in nowhere.items() if names]
    what = "; ".join(parts) or "its combination of " + ", ".join(sorted(lacking))
    checkpoints = ", ".join(available.get("checkpoints", [])[:20]) or "(none)"
    return GraphInvalid(
        f"No backend can run this job: {what} found on none of the {len(enabled)} backend(s). Checkpoints that "
        f"exist: {checkpoints}.",
        details={
            "error": {"type": "no_capable_backend", "message": f"missing {what}"},
            "missing": {k: v for k, v in nowhere.items() if v},
            "backends": {u: m for u, m in missing.items()},
            "available_models": available,
        },
    )


#: How long a job leaves free slots to higher-priority work waiting in the queue (see ``acquire``).
YIELD_BUDGET_SECONDS = 3.0


async def acquire(
    pool: BackendPool,
    slots: SlotPool,
    backends: list[str],
    *,
    timeout: float,
    higher_waiting: Callable[[], Awaitable[bool]] | None = None,
) -> SlotLease:
    """Wait for a slot on the least-loaded of ``backends`` that is still in the pool.

    A worker claims more jobs than there are slots (so Prefect's bookkeeping overlaps rendering). When a slot
    frees while ``higher_waiting()`` says higher-priority jobs sit unclaimed in the queue, this job leaves the
    slot to them for a moment (a worker claims them as soon as one of its attempts ends), up to
    ``YIELD_BUDGET_SECONDS`` per attempt so nothing can wait on it forever.

    Raises:
        BackendUnavailable: every one of them left the pool (down, quarantined, removed), or no slot came free
            within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    token, delay = uuid.uuid4().hex, 0.02
    yielded = 0.0
    while True:
        view = await pool.view()
        live = [u for u in backends if view.usable(u)]
        live = live or [u for u in backends if (s := view.get(u)) is not None and s.last_resort]
        if not live:
            raise BackendUnavailable(
                f"the backends able to run this job left the pool while it waited: {', '.join(backends)}",
                details={"backends": backends},
            )
        if higher_waiting is not None and yielded < YIELD_BUDGET_SECONDS and await slots.has_room(live):
            if await higher_waiting():
                await asyncio.sleep(0.05)
                yielded += 0.05
                continue
        lease = await slots.try_acquire(live, token)
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            raise BackendUnavailable(
                f"no free slot on {backends} within {timeout:.0f}s", details={"backends": backends}
            )
        await slots.wait_released(delay)
        delay = min(delay * 1.5, MAX_POLL_SECONDS)
