"""Bounded waits: a test waits for a condition, never for a fixed time."""

from __future__ import annotations

import asyncio
from typing import Any


async def until(check: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until ``check()`` (a function or a coroutine function) is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"{what}: not true after {timeout}s"
        await asyncio.sleep(0.02)
