"""The Lua scripts behind every job state transition, loaded once per Redis client."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from comfyflow.core.hotline import HotLine

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

    async def run(
        self, name: str, keys: list[str], args: list[Any], client: Any = None, via: HotLine | None = None
    ) -> Any:
        """Run a script; ``client`` may be a pipeline (the call is queued there, run by its ``execute``); ``via``
        a hot line (core/hotline.py: replies come back as strings rather than bytes)."""
        if via is not None and client is None:
            script = self._scripts[name]
            return await via.script(script.sha, script.script, keys, [_arg(a) for a in args])
        return await self._scripts[name](keys=keys, args=[_arg(a) for a in args], client=client)


def _arg(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    return str(value)
