"""Running the API: in this process, or in N Sanic worker processes sharing one port (COMFYFLOW_API_PROCESSES,
``comfyflow serve --api-processes N``) for machines with more cores.

Each API process opens its own runtime (Redis client, storage); everything they share lives in Redis, so any
process answers any request. Job workers (``run_worker``) run in the first API process only, so the number of
jobs run at once does not grow with the API processes.
"""

from __future__ import annotations

import gc

from sanic import Sanic

from comfyflow.settings import Settings

#: Connections the kernel queues for accept (Sanic's default is 100; Linux caps it at net.core.somaxconn). A burst
#: of new clients beyond the queue has its connection attempts dropped and retried by the client's kernel after
#: 1 s, then 3 s: seconds of latency for requests the server could answer in milliseconds.
BACKLOG = 1024


def serve(app: Sanic, settings: Settings, *, host: str, port: int) -> None:
    """Serve ``app`` (made by :func:`~comfyflow.api.app.create_app`) until stopped (SIGINT/SIGTERM: graceful),
    in ``settings.api_processes`` processes. Its listeners run in every API process;
    :func:`~comfyflow.api.app.first_process` tells the first one."""
    app.after_server_start(_freeze_startup_objects)
    if settings.api_processes <= 1:
        app.run(host=host, port=port, single_process=True, access_log=False, motd=False, backlog=BACKLOG)
        return
    # The worker processes are forked from this one and inherit the app built above; nothing (Redis, storage,
    # job workers, embedded services) is opened before they start: each opens its own in its listeners.
    Sanic.start_method = "fork"
    _stop_waiting_for_acks_on_shutdown()
    app.prepare(
        host=host, port=port, workers=settings.api_processes, access_log=False, motd=False, backlog=BACKLOG
    )
    Sanic.serve(primary=app)


async def _freeze_startup_objects(app: Sanic) -> None:
    """Move what exists once the server is up (modules, the app, clients: ~100,000 objects) out of the garbage
    collector's reach: a full collection walked all of them, a 60-100 ms stall of every request in flight,
    whenever enough objects had survived the younger generations. They live as long as the process anyway."""
    gc.collect()
    gc.freeze()


def _stop_waiting_for_acks_on_shutdown() -> None:
    """Sanic 25.12's process manager waits for every worker's startup ack in a loop that, when SIGTERM arrives
    meanwhile, sends its own shutdown message back to itself forever: a stop right after start hung the server.
    Count a manager that is shutting down as acked, so it goes on to stop its workers."""
    from sanic.worker.manager import WorkerManager

    acked = WorkerManager._all_workers_ack
    if getattr(acked, "_comfyflow", False):
        return

    def acked_or_stopping(self: WorkerManager) -> bool:
        return bool(getattr(self, "_shutting_down", False)) or bool(acked(self))

    acked_or_stopping._comfyflow = True  # type: ignore[attr-defined]
    WorkerManager._all_workers_ack = acked_or_stopping  # type: ignore[method-assign]
