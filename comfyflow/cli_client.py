"""Client commands of the ``comfyflow`` program: ``submit``, ``status``, ``watch``, ``cancel``, ``retry``, ``jobs``.

They talk to a running API (``comfyflow serve``) through ``comfyflow.client``; the URL and API key come from
``--url``/``--api-key`` or ``COMFYFLOW_URL``/``COMFYFLOW_API_KEY``, read here and passed to the client.
Machine-readable output (job ids, ``--json``, artifact URLs) goes to stdout; progress and messages to stderr.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from comfyflow.client import AsyncClient
    from comfyflow.models import Job

T = TypeVar("T")
err = Console(stderr=True)
out = Console(soft_wrap=True)

Url = Annotated[
    str, typer.Option("--url", envvar="COMFYFLOW_URL", help="Base URL of the comfyflow API.", show_envvar=True)
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="COMFYFLOW_API_KEY", help="API key (Bearer).", show_envvar=True, show_default=False
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the job(s) as JSON on stdout.")]
DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
COLORS = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "canceled": "magenta"}


def _run(url: str, api_key: str | None, action: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run ``action`` with a client; API and connection errors become a message and exit code 1."""
    from comfyflow.client import ApiError, AsyncClient, ClientError

    async def main() -> T:
        async with AsyncClient(url, api_key=api_key) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        from comfyflow.cli_errors import option_for

        rid = f" (request id {exc.request_id})" if exc.request_id else ""
        fields = [i for i in (exc.details if isinstance(exc.details, list) else []) if isinstance(i, dict)]
        fields = [i for i in fields if i.get("field")]
        for item in fields:  # one line per field, named as the option that sets it
            name = str(item["field"]).split(".")[-1]
            err.print(Text.assemble(("error", "red"), f": {option_for(name)}: {item.get('message', '')}"))
        if not fields:
            err.print(Text.assemble((f"error {exc.status} {exc.code}", "red"), ": ", exc.message, rid))
        raise typer.Exit(1) from None
    except (ClientError, ValueError) as exc:
        err.print(Text.assemble(("error", "red"), f": {exc}"))
        raise typer.Exit(1) from None


def _dump(job: Job) -> str:
    return job.model_dump_json(indent=2, exclude={"owner", "worker"})


def _status(status: str) -> str:
    return f"[{COLORS.get(status, 'white')}]{status}[/]"


def _show_final(job: Job, as_json: bool) -> None:
    if as_json:
        print(_dump(job))
    elif job.status.value == "succeeded" and job.result is not None:
        for art in job.result.artifacts:
            print(art.url or art.key)
        err.print(f"seed {job.result.seed}; {len(job.result.artifacts)} artifact(s)", highlight=False)
    elif job.error is not None:
        err.print(Text.assemble((job.error.code, "red"), ": ", job.error.message))


async def follow(client: AsyncClient, job_id: str, *, quiet: bool = False) -> Job:
    """Show a live progress bar from the job's event stream until it finishes; return the finished job."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
        console=err, disable=quiet, transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"{job_id[:8]} waiting", total=1.0)
        while True:
            async for ev in client.events(job_id):
                data = ev.data
                if ev.type == "progress":
                    desc = str(data.get("phase") or "running")
                    if data.get("node_type"):
                        desc += f" {data['node_type']}"
                    if data.get("step") and data.get("max"):
                        desc += f" {data['step']}/{data['max']}"
                    bar.update(task, completed=float(data.get("value") or 0), description=f"{job_id[:8]} {desc}")
                elif ev.type == "status":
                    attempt = f" (attempt {data['attempt']})" if data.get("attempt", 1) != 1 else ""
                    bar.update(task, description=f"{job_id[:8]} {data.get('status')}{attempt}")
                elif ev.type == "done":
                    final = str(data.get("status", "done"))
                    completed = 1.0 if final == "succeeded" else bar.tasks[0].completed
                    bar.update(task, completed=completed, description=f"{job_id[:8]} {_status(final)}")
            job = await client.get(job_id)
            if job.status.value in TERMINAL:
                return job


def submit(
    prompt: Annotated[str | None, typer.Argument(help="What to draw (or give --file).", show_default=False)] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A JSON job request ('-' reads stdin); options override it.")
    ] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="What to avoid.")] = None,
    width: Annotated[int | None, typer.Option(help="Multiple of 8, 64..2048.")] = None,
    height: Annotated[int | None, typer.Option(help="Multiple of 8, 64..2048.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps, 1..150.")] = None,
    cfg: Annotated[float | None, typer.Option("--cfg", help="CFG scale, 1..30.")] = None,
    sampler: Annotated[str | None, typer.Option(help="ComfyUI sampler name, e.g. euler, dpmpp_2m.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="ComfyUI scheduler name, e.g. normal, karras.")] = None,
    seed: Annotated[int | None, typer.Option(help="-1 picks one at random.")] = None,
    model: Annotated[str | None, typer.Option(help="Checkpoint file name (default: the first).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per job, 1..10.")] = None,
    priority: Annotated[str | None, typer.Option(help="high, normal or low.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="A label kept with the job (repeatable).")] = None,
    init_image: Annotated[
        str | None, typer.Option(help="img2img input: an image file (uploaded first) or an upload id.")
    ] = None,
    denoise: Annotated[float | None, typer.Option(help="img2img: how much to change the input, 0..1.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key + same request = the same job.")] = None,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Follow the job with a progress bar.")] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Submit a job to the API; prints its id (or, with --watch, its artifact URLs when done)."""
    body: dict[str, Any] = _read_request(file) if file is not None else {}
    given = {
        "prompt": prompt, "negative_prompt": negative, "width": width, "height": height, "steps": steps,
        "cfg_scale": cfg, "sampler": sampler, "scheduler": scheduler, "seed": seed, "model": model,
        "batch_size": batch_size, "priority": priority, "labels": label or None, "denoise": denoise,
    }  # fmt: skip
    body.update({k: v for k, v in given.items() if v is not None})
    if not body:
        err.print("[red]error[/red]: give a prompt, or a request with --file request.json")
        raise typer.Exit(2)

    upload_file = init_image is not None and Path(init_image).expanduser().is_file()
    if init_image is not None and not upload_file and not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", init_image):
        from comfyflow.cli_errors import existing_file

        existing_file("--init-image", init_image)  # not an upload id, so a file: name what is wrong with it

    async def action(client: AsyncClient) -> int:
        if init_image is not None:
            body["init_image"] = init_image
            if upload_file:
                up = await client.upload(init_image)
                err.print(f"uploaded {init_image} as {up.upload_id} ({up.width}x{up.height})", highlight=False)
                body["init_image"] = up.upload_id
        job = await client.submit(body, idempotency_key=idempotency_key)
        if not watch_:
            print(_dump(job) if as_json else job.job_id)
            if not as_json:
                err.print(f"job {job.job_id} {_status(job.status.value)}; follow it with: comfyflow watch {job.job_id}")
            return 0
        err.print(f"job {job.job_id} {_status(job.status.value)}")
        job = await follow(client, job.job_id)
        _show_final(job, as_json)
        return 0 if job.status.value == "succeeded" else 1

    raise typer.Exit(_run(url, api_key, action))


def _read_request(file: Path) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error[/red]: cannot read a JSON request from {file}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    if not isinstance(data, dict):
        err.print(f"[red]error[/red]: {file} holds {type(data).__name__}; expected a JSON object", highlight=False)
        raise typer.Exit(2)
    return data


def status(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Show a job: state, progress, attempt, durations, artifacts or error."""
    job = _run(url, api_key, lambda c: c.get(job_id))
    if as_json:
        print(_dump(job))
        return
    table = Table(show_header=False, box=None)
    table.add_row("job", job.job_id)
    table.add_row("status", _status(job.status.value) + (" (cancel requested)" if job.cancel_requested else ""))
    p = job.progress
    step = f" step {p.step}/{p.max}" if p.step and p.max else ""
    table.add_row("progress", f"{p.value:.0%} {p.phase}{step}")
    table.add_row("attempt", f"{job.attempt} of {job.max_attempts}")
    table.add_row("created", job.created_at.isoformat(timespec="seconds"))
    d = job.durations
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in d.model_dump().items() if v is not None)
    if timing:
        table.add_row("durations", timing)
    if job.result is not None:
        table.add_row("seed", str(job.result.seed))
        for art in job.result.artifacts:
            table.add_row("artifact", f"{art.url or art.key} ({art.content_type}, {art.size} bytes)")
    if job.error is not None:
        table.add_row("error", Text.assemble((job.error.code, "red"), ": ", job.error.message))
    out.print(table)


def watch(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Follow a job with a live progress bar; print its artifact URLs. Exit code 0 only if it succeeded."""

    async def action(client: AsyncClient) -> int:
        job = await follow(client, job_id)
        _show_final(job, as_json)
        return 0 if job.status.value == "succeeded" else 1

    raise typer.Exit(_run(url, api_key, action))


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Cancel a job: a queued one never starts, a running one is interrupted. Prints the state it is in now."""
    job = _run(url, api_key, lambda c: c.cancel(job_id))
    if as_json:
        print(_dump(job))
        return
    note = " (stopping)" if job.status.value == "running" else ""
    print(f"{job.job_id} {job.status.value}{note}")


def retry(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Follow the job with a progress bar.")] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Run a failed or canceled job again (a new attempt, same id). Prints its state, or follows it with --watch."""

    async def action(client: AsyncClient) -> int:
        job = await client.retry(job_id)
        if not watch_:
            print(_dump(job) if as_json else f"{job.job_id} {job.status.value} (attempt {job.attempt})")
            return 0
        job = await follow(client, job.job_id)
        _show_final(job, as_json)
        return 0 if job.status.value == "succeeded" else 1

    raise typer.Exit(_run(url, api_key, action))


def jobs(
    status: Annotated[
        str | None, typer.Option(help="Only jobs in this state: queued, running, succeeded, failed, canceled, expired.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs, newest first.")] = 20,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List your jobs, newest first."""

    async def action(client: AsyncClient) -> list[Job]:
        return [job async for job in client.list(status=status, limit=limit, page_size=min(limit, 100))]

    found = _run(url, api_key, action)
    if as_json:
        print(json.dumps([json.loads(_dump(j)) for j in found], indent=2))
        return
    table = Table("job", "status", "progress", "created", "kind", "prompt")
    for job in found:
        prompt = str(job.request.get("prompt", ""))
        table.add_row(
            job.job_id, _status(job.status.value), f"{job.progress.value:.0%}",
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"), str(job.request.get("kind", "")),
            Text(prompt if len(prompt) <= 40 else prompt[:39] + "…"),
        )  # fmt: skip
    out.print(table)
    if not found:
        err.print("no jobs" + (f" with status {status}" if status else ""))


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``comfyflow`` program."""
    for command in (submit, status, watch, cancel, retry, jobs):
        app.command()(command)
