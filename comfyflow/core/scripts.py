"""The Lua scripts behind every job state transition, loaded once per Redis client."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

NAMES = (
    "annotate",
    "submit",
    "claim",
    "heartbeat",
    "update",
    "finish",
    "requeue",
    "reclaim",
    "cancel",
    "retry",
    "promote",
    "slot_acquire",
    "expire",
    "batch_submit",
    "batch_release",
    "run_claim",
    "run_beat",
)


def _source(name: str) -> str:
    lua = files("comfyflow.core") / "lua"
    lib = (lua / "lib.lua").read_text()
    return lib + "\n" + (lua / f"{name}.lua").read_text()


class Scripts:
    """Registered scripts; calling one runs EVALSHA (falling back to EVAL once after a server restart)."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {n: redis.register_script(_source(n)) for n in NAMES}

    async def run(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """Run a script; ``client`` may be a pipeline (the call is queued there, run by its ``execute``)."""
        return await self._scripts[name](keys=keys, args=[_arg(a) for a in args], client=client)


def _arg(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    return str(value)
