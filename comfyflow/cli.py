"""The ``comfyflow`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from comfyflow.cli_admin import admin_app
from comfyflow.cli_batch import batch_app
from comfyflow.cli_client import register as register_client_commands
from comfyflow.cli_services import services_app
from comfyflow.errors import ComfyflowError
from comfyflow.settings import Settings, load_settings

app = typer.Typer(help="comfyflow: production image generation on ComfyUI servers.", no_args_is_help=True)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from comfyflow import __version__

        print(f"comfyflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """comfyflow: production image generation on ComfyUI servers."""


def _settings(**overrides: Any) -> Settings:
    from comfyflow import logs

    try:
        settings = load_settings(**overrides)
    except ComfyflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, settings.log_format)
    return settings


KEEP_OPTION = typer.Option(
    "--keep-services",
    help="Keep the embedded services running after exit (as `comfyflow services start` does); by default the "
    "last process using them stops them.",
)


def _keep(settings: Settings, keep_services: bool) -> None:
    if keep_services:
        from comfyflow.embedded import sessions

        sessions.keep(settings.resolved_home)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default COMFYFLOW_API_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default COMFYFLOW_API_PORT, 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Jobs this process runs at once (0 = API only).")] = None,
    simulate: Annotated[bool, typer.Option(help="Also start the fake ComfyUI and render on it.")] = False,
    render_time: Annotated[float, typer.Option(help="With --simulate: seconds per prompt.")] = 2.0,
    keep_services: Annotated[bool, KEEP_OPTION] = False,
    api_processes: Annotated[
        int | None, typer.Option(help="API server processes on the port (default COMFYFLOW_API_PROCESSES, 1).")
    ] = None,
) -> None:
    """Serve the API with embedded job workers and services: one command for a working service."""
    import threading

    from comfyflow.embedded.sessions import start_early
    from comfyflow.testing.api_server import free_port

    overrides: dict[str, Any] = {}
    if host:
        overrides["api_host"] = host
    if port:
        overrides["api_port"] = port
    if api_processes:
        overrides["api_processes"] = api_processes
    sim_port = free_port()
    if simulate:
        overrides["backends"] = [f"http://127.0.0.1:{sim_port}"]
    settings = _settings(**overrides)
    _keep(settings, keep_services)
    # The embedded services come up while the app is imported. With several API processes each (forked) process
    # starts or joins them itself, so that each counts as one of their users.
    services = start_early(settings) if settings.api_processes <= 1 else None
    if simulate:
        from comfyflow.testing.fake_comfyui import run as run_fake

        # a daemon thread: it ends with the process, so its folders live in the home (as `generate --simulate`'s)
        sim = ("127.0.0.1", sim_port, render_time, None, settings.resolved_home / "sim")
        threading.Thread(target=run_fake, args=sim, daemon=True).start()
    from comfyflow.api.app import create_app, first_process
    from comfyflow.api.serving import serve as serve_api
    from comfyflow.cli_banner import deliver_first_key, services_line

    run_workers = workers != 0
    try:
        app = create_app(settings, run_worker=run_workers, worker_concurrency=workers or None, services=services)
    except BaseException:
        if services is not None:
            services.abandon(settings.resolved_home)
        raise
    base = f"http://{settings.api_host}:{settings.api_port}"

    @app.before_server_start
    async def _bootstrap(app: Any) -> None:
        from comfyflow.api.admin import bootstrap_first_key, bootstrap_message

        app.ctx.bootstrap_message = None
        if not first_process():  # with --api-processes N, the first process bootstraps and prints the banner
            return
        key = await bootstrap_first_key(app.ctx.rt)
        app.ctx.bootstrap_message = bootstrap_message(key, base) if key else None

    @app.after_server_start
    async def _banner(app: Any) -> None:
        if not first_process():
            return
        lines = [f"comfyflow API on {base} (docs {base}/docs, web console {base}/ui)"]
        if simulate:
            lines.append(f"fake ComfyUI on {settings.backends[0]} (render time {render_time}s)")
        else:
            lines.append(f"ComfyUI backends: {', '.join(settings.backends)}")
        prefect = getattr(app.ctx, "prefect_api_url", None)
        if prefect:
            lines.append(f"Prefect UI on {prefect.removesuffix('/api')}")
        lines.append(f"job workers: {'on' if run_workers else 'off'}; Ctrl-C stops gracefully")
        if settings.api_processes > 1:
            lines.append(f"API processes: {settings.api_processes}")
        if kept_or_not := services_line(settings):
            lines.append(kept_or_not)
        console.print("\n".join(lines), soft_wrap=True, highlight=False, markup=False)
        if app.ctx.bootstrap_message:  # stdout on a terminal, else a 0600 file: never the log stream
            deliver_first_key(app.ctx.bootstrap_message, settings.resolved_home)
            app.ctx.bootstrap_message = None

    try:
        serve_api(app, settings, host=settings.api_host, port=settings.api_port)
    finally:
        if services is not None and getattr(app.ctx, "session", services.token) is not None:
            services.abandon(settings.resolved_home)  # the server never got to stop them itself


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (default COMFYFLOW_WORKER_CONCURRENCY).")
    ] = None,
    keep_services: Annotated[bool, KEEP_OPTION] = False,
) -> None:
    """Run job workers against the configured Redis (embedded when COMFYFLOW_REDIS_URL is unset)."""
    from comfyflow.service import run_worker

    settings = _settings()
    _keep(settings, keep_services)

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await run_worker(settings, stop, concurrency=concurrency)

    asyncio.run(main())


app.add_typer(services_app, name="services")
app.add_typer(admin_app, name="admin")
app.add_typer(batch_app, name="batch")


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8188,
    render_time: Annotated[float, typer.Option(help="Seconds each prompt takes.")] = 1.0,
) -> None:
    """Run the fake ComfyUI server alone, so comfyflow can be tried without a GPU."""
    from comfyflow.testing.fake_comfyui import run

    console.print(f"fake ComfyUI on http://{host}:{port} (render time {render_time}s); Ctrl-C to stop")
    run(host, port, render_time)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    negative: Annotated[str, typer.Option("--negative", help="What to avoid.")] = "",
    width: int = 512,
    height: int = 512,
    steps: int = 20,
    cfg: Annotated[float, typer.Option("--cfg", help="CFG scale.")] = 7.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    seed: Annotated[int, typer.Option(help="-1 picks one at random.")] = -1,
    model: Annotated[str | None, typer.Option(help="Checkpoint file name (default: the first).")] = None,
    batch_size: int = 1,
    simulate: Annotated[bool, typer.Option(help="Start the fake ComfyUI and render on it.")] = False,
    render_time: Annotated[float, typer.Option(help="With --simulate: seconds per prompt.")] = 1.0,
    keep_services: Annotated[bool, KEEP_OPTION] = False,
) -> None:
    """Run one job in-process on the embedded defaults, show its progress, print the artifact paths."""
    import pydantic

    from comfyflow.models import Txt2ImgRequest

    try:
        request = Txt2ImgRequest(
            prompt=prompt, negative_prompt=negative, width=width, height=height, steps=steps, cfg_scale=cfg,
            sampler=sampler, scheduler=scheduler, seed=seed, model=model, batch_size=batch_size,
        )  # fmt: skip
    except pydantic.ValidationError as exc:
        from comfyflow.cli_errors import validation_lines

        for line in validation_lines(Txt2ImgRequest, exc):
            console.print(f"[red]error[/red]: {line}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    settings = _settings()
    _keep(settings, keep_services)
    code = asyncio.run(_generate(settings, request, simulate=simulate, render_time=render_time))
    raise typer.Exit(code)


async def _generate(settings: Settings, request: Any, *, simulate: bool, render_time: float) -> int:
    from comfyflow.core.worker import Worker
    from comfyflow.service import open_runtime, runner_for

    async with contextlib.AsyncExitStack() as stack:
        if simulate:
            from comfyflow.testing.fake_comfyui import FakeComfyUI

            fake = await stack.enter_async_context(
                FakeComfyUI(render_time=render_time, workdir=settings.resolved_home / "sim")
            )
            settings = settings.model_copy(update={"backends": [fake.url]})
            console.print(f"fake ComfyUI on {fake.url}")
        rt, urls = await stack.enter_async_context(open_runtime(settings))
        if urls.prefect_api_url:
            console.print(f"Prefect UI: {urls.prefect_api_url.removesuffix('/api')}")
        stop = asyncio.Event()
        runner = await stack.enter_async_context(runner_for(rt, urls, stop))
        worker = Worker(rt, runner=runner) if runner else Worker(rt)
        worker_task = asyncio.create_task(worker.run(stop, grace=5))
        job = (await rt.store.submit(request)).job
        assert job is not None
        console.print(f"job {job.job_id} queued")
        final = await _follow(rt, job.job_id)
        stop.set()
        await worker_task
    if final.status.value != "succeeded":
        err = final.error
        console.print(f"[red]job {final.status.value}: {err.code if err else ''} {err.message if err else ''}[/red]")
        return 1
    root = settings.resolved_storage_url
    for art in final.result.artifacts if final.result else []:
        print(_local_path(root, art.key))
    console.print(f"seed {final.result.seed if final.result else '?'}; {final.durations}")
    return 0


async def _follow(rt: Any, job_id: str) -> Any:
    after = "0-0"
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console) as bar:  # fmt: skip
        task = bar.add_task("queued", total=1.0)
        while True:
            for ev in await rt.events.read(job_id, after, block_ms=1000):
                after = ev.id
                if ev.type == "progress":
                    desc = ev.data.get("phase", "")
                    if ev.data.get("step"):
                        desc += f" step {ev.data['step']}/{ev.data.get('max')}"
                    bar.update(task, completed=ev.data.get("value", 0), description=desc)
                elif ev.type == "status":
                    bar.update(task, description=f"{ev.data.get('status')} (attempt {ev.data.get('attempt', '?')})")
                elif ev.type == "done":
                    bar.update(task, completed=1.0, description=ev.data.get("status", "done"))
                    return await rt.store.get(job_id)


def _local_path(root: str, key: str) -> str:
    parts = urlsplit(root)
    if parts.scheme in ("file", ""):
        return str(Path(parts.path) / key)
    return f"{root.rstrip('/')}/{key}"


register_client_commands(app)  # submit, status, watch, cancel, jobs: clients of a running API


def main() -> None:
    try:
        app()
    except ComfyflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        sys.exit(2)


if __name__ == "__main__":
    main()
