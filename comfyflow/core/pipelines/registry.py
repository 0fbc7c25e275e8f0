"""Registered pipelines, found by name: entry points in the ``comfyflow.pipelines`` group (loaded lazily, like
plugins; the shipped examples register this way), plus pipelines registered in this process with
:func:`register` (tests, notebooks, a service that defines its own)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from comfyflow.errors import NotFound, PluginError

if TYPE_CHECKING:
    from comfyflow.core.pipelines.dsl import Pipeline

GROUP = "comfyflow.pipelines"
_local: dict[str, Pipeline] = {}


def register(pipeline: Pipeline) -> Pipeline:
    """Make ``pipeline`` startable by name in this process (over the API too, when the API runs here)."""
    _local[pipeline.name] = pipeline
    return pipeline


def unregister(name: str) -> None:
    _local.pop(name, None)


def names() -> list[str]:
    """Every pipeline name known here, without loading any."""
    return sorted({*_local, *(ep.name for ep in entry_points(group=GROUP))})


def get(name: str) -> Pipeline:
    """The pipeline registered as ``name``.

    Raises:
        NotFound: no pipeline has that name (the message lists the known ones).
        PluginError: its entry point failed to load, or does not name a Pipeline.
    """
    from comfyflow.core.pipelines.dsl import Pipeline

    if name in _local:
        return _local[name]
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        known = ", ".join(names()) or "none"
        raise NotFound(f"No pipeline named {name!r} (registered: {known}).", details={"pipeline": name})
    ep = found[name]
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(
            f"The pipeline {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}. Check that its "
            "module and its dependencies are installed in this environment.",
            details={"group": GROUP, "name": name, "target": ep.value},
        ) from exc
    if not isinstance(obj, Pipeline):
        raise PluginError(
            f"The entry point {name!r} ({ep.value}) is a {type(obj).__name__}, not a Pipeline; decorate the "
            "function with @comfyflow.core.pipelines.pipeline.",
            details={"group": GROUP, "name": name, "target": ep.value},
        )
    return obj


def available() -> dict[str, Pipeline]:
    """Every pipeline that loads, by name (ones that fail to load are left out)."""
    out = {}
    for name in names():
        try:
            out[name] = get(name)
        except (NotFound, PluginError):
            continue
    return out
