"""Plugins load lazily by name from entry points; built-ins register through the same groups.

Nothing is registered at import time. A plugin that cannot be loaded says which, what is installed, and how to
fix it.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from comfyflow.errors import PluginError

GROUPS = {
    "backend": "comfyflow.backends",
    "storage": "comfyflow.storage",
    "auth": "comfyflow.auth",
}


def available(kind: str) -> dict[str, EntryPoint]:
    """Installed plugins of one kind (backend, storage, auth), by name."""
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def load(kind: str, name: str) -> Any:
    """Load the object a plugin's entry point names.

    Raises:
        PluginError: naming the plugin, the installed ones, and the fix.
    """
    group = GROUPS[kind]
    found = available(kind)
    if name not in found:
        installed = ", ".join(sorted(found)) or "none"
        raise PluginError(
            f"No {kind} plugin named {name!r} in entry-point group {group!r} (installed: {installed}). "
            f"Install the package that provides it, or pick an installed one in COMFYFLOW_{kind.upper()}_PLUGIN.",
            details={"group": group, "name": name, "installed": sorted(found)},
        )
    ep = found[name]
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(
            f"The {kind} plugin {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}. "
            "Check that its package and its dependencies are installed in this environment "
            f"(pip install the package that provides {ep.value.split(':')[0]!r}).",
            details={"group": group, "name": name, "target": ep.value},
        ) from exc
