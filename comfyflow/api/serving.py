"""Running the API: in this process, or in N Sanic worker processes sharing one port (COMFYFLOW_API_PROCESSES,
``comfyflow serve --api-processes N``) for machines with more cores.

Each API process opens its own runtime (Redis client, storage); everything they share lives in Redis, so any
process answers any request. Job workers (``run_worker``) run in the first API process only, so the number of
jobs run at once does not grow with the API processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sanic import Sanic

from comfyflow.api.app import create_app
from comfyflow.settings import Settings


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    run_worker: bool,
    worker_concurrency: int | None = None,
    configure: Callable[[Sanic], Any] | None = None,
) -> None:
    """Serve the API until stopped (SIGINT/SIGTERM: graceful). ``configure`` adds listeners to the app (they run in
    every API process; :func:`~comfyflow.api.app.first_process` tells the first one)."""
    app = create_app(settings, run_worker=run_worker, worker_concurrency=worker_concurrency)
    if configure is not None:
        configure(app)
    if settings.api_processes <= 1:
        app.run(host=host, port=port, single_process=True, access_log=False, motd=False)
        return
    # The worker processes are forked from this one and inherit the app built above; nothing (Redis, storage,
    # job workers) is opened before they start: each opens its own in its before_server_start listener.
    Sanic.start_method = "fork"
    app.prepare(host=host, port=port, workers=settings.api_processes, access_log=False, motd=False)
    Sanic.serve(primary=app)
