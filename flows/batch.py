"""The ``batch`` flow: one flow run per batch, from submission until its last item has finished.

The items are normal jobs, each with its own ``generate`` flow run (tagged ``label:batch:<id>``); this run is
the batch's place in the Prefect UI: named after the batch, tagged with its role, priority and id, logging its
progress, and ending Completed, Failed (some items failed) or Cancelled. Retry on it re-runs the failed items;
Cancel cancels the items not finished yet (``flows/pipelines.py: watch_ui``). Like ``generate``, it is created
from its deployment and executed in-process by the workers' run plane, never by a Prefect worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.states import Cancelled

from comfyflow.core.batches import Batch
from comfyflow.core.pipelines.execution import watch_batch
from comfyflow.core.runtime import Runtime
from comfyflow.errors import ComfyflowError
from flows.artifacts import BatchArtifacts

#: What this process runs inside a batch's flow run, by batch id (the plane registers it before running the flow).
ACTIVE: dict[str, Callable[[], Awaitable[Any]]] = {}


class BatchItemsFailed(ComfyflowError):
    """Raised (to fail the batch's flow run) when some items of a batch failed."""

    code = "BATCH_ITEMS_FAILED"


@flow(name="batch", persist_result=False, retries=0, validate_parameters=False)
async def batch(batch_id: str) -> Any:
    """Follow batch ``batch_id`` until every item has finished."""
    body = ACTIVE.get(batch_id)
    if body is None:
        raise ComfyflowError(
            f"Batch {batch_id} is not held by this process. Batch flow runs are executed by comfyflow's workers; "
            "submit batches with POST /api/v1/batches (or comfyflow batch submit)."
        )
    return await body()


def batch_body(runtime: Runtime, batch_id: str, *, every: float = 1.0) -> Callable[[], Awaitable[Any]]:
    """The flow's work: log progress as it changes, then end the way the batch ended."""

    async def run() -> Any:
        logger = get_run_logger()
        marks: set[int] = set()

        async def progress(b: Batch) -> None:
            decile = int(b.progress * 10)
            if decile not in marks:
                marks.add(decile)
                logger.info("batch %s: %d of %d items finished %s", b.batch_id, round(b.progress * b.total),
                            b.total, {k: v for k, v in b.counts.items() if v})  # fmt: skip
            await published.progress(b)

        async with get_client() as client:
            published = BatchArtifacts(client, runtime.settings.public_base_url)  # progress, then link and table
            final = await watch_batch(runtime, batch_id, every=every, on_progress=progress)
            if final is None:
                raise ComfyflowError(f"batch {batch_id} no longer exists")
            await published.finished(final)
        summary = {"batch_id": batch_id, "status": final.status, "total": final.total, "counts": final.counts}
        if final.status == "failed":
            raise BatchItemsFailed(
                f"{final.counts.get('failed', 0)} of {final.total} items failed; retry them from here or with "
                f"POST /api/v1/batches/{batch_id}/retry",
                details=summary,
            )
        if final.status == "canceled":
            return Cancelled(message=f"batch canceled: {final.counts}")
        return summary

    return run
