"""Reading what a Prefect server recorded: its task-run recorder writes task runs from events in batches, so a
test waits (bounded) until they are there and final instead of reading once."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId


async def task_runs(flow_run_id: Any, count: int = 1, *, final: bool = True, timeout: float = 20) -> list[Any]:
    """The flow run's task runs once at least ``count`` are recorded (and, with ``final``, all are final)."""
    flt = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with get_client() as client:
            runs = list(await client.read_task_runs(task_run_filter=flt))
        if len(runs) >= count and (not final or all(r.state and r.state.is_final() for r in runs)):
            return runs
        if loop.time() > deadline:
            raise AssertionError(f"{len(runs)} task runs recorded for flow run {flow_run_id}, expected {count}")
        await asyncio.sleep(0.1)
