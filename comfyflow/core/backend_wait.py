"""Waiting for a backend: a job that no healthy backend can take yet (all down, just restarted and not yet
through the pool's health hysteresis, or not described yet) waits inside its attempt, visibly
(``progress.phase = "waiting_for_backend"``), up to ``COMFYFLOW_BACKEND_WAIT_SECONDS``, instead of spending
an attempt per try. Only when the wait runs out does the attempt fail with BACKEND_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from comfyflow.errors import NoHealthyBackend
from comfyflow.models import Progress

if TYPE_CHECKING:
    from comfyflow.core.attempt import AttemptContext

T = TypeVar("T")

#: How often a waiting job looks again (the pool's view is cheap: one Redis read when nothing changed).
POLL_SECONDS = 0.5


async def until_a_backend_can_take(ctx: AttemptContext, step: Callable[[], Awaitable[T]]) -> T:
    """Run ``step`` until it does not raise NoHealthyBackend, or the wait is over (then re-raise). Other
    failures (a backend that is up but refuses, 5xx, drops the socket) spend the attempt as before."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.runtime.settings.backend_wait_seconds
    waiting = False
    while True:
        try:
            return await step()
        except NoHealthyBackend as exc:
            left = deadline - loop.time()
            if left <= 0:
                raise
            if not waiting:
                waiting = True
                ctx.log.info("waiting for a healthy backend", reason=exc.message[:200])
                await ctx.progress(Progress(value=0.0, phase="waiting_for_backend"), force=True)
            await asyncio.sleep(min(POLL_SECONDS, left))
