"""``comfyflow batch``: submit a batch from a YAML (or JSON) file, watch it with a progress bar, cancel, retry,
save its contact sheet.

A client of the API over HTTP (aiohttp): ``--url``/``--api-key`` or ``COMFYFLOW_URL``/``COMFYFLOW_API_KEY``.
The file is the body of ``POST /api/v1/batches``::

    name: fox-sweep
    priority: low
    base: {prompt: "a red fox", steps: 20, width: 512, height: 512}
    sweep:
      seed: [1, 2, 3, 4, 5]
      cfg_scale: [5, 7]
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

batch_app = typer.Typer(help="Batches: many jobs at once, from a list or a sweep.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)
DEFAULT_URL = "http://127.0.0.1:8000"
ACTIVE = ("queued", "running")

Url = Annotated[
    str, typer.Option("--url", envvar="COMFYFLOW_URL", help="Base URL of the comfyflow API.", show_envvar=True)
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="COMFYFLOW_API_KEY", help="API key (Bearer).", show_envvar=True,
                 show_default=False),
]  # fmt: skip


class ApiFailed(Exception):
    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} {error.get('code', '')}: {error.get('message', body)}")
        self.status = status
        self.error = error


class Api:
    """Just what the batch commands need of the API."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.session is not None
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        for attempt in range(30):  # ride out an API restart (or a 503 with Retry-After)
            try:
                async with self.session.request(method, f"{self.url}{path}", json=body) as r:
                    data = await r.json(content_type=None)
                    if r.status == 503 and attempt < 29:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status >= 400:
                        raise ApiFailed(r.status, data)
                    return data
            except aiohttp.ClientConnectionError:
                if attempt == 29:
                    raise
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def fetch(self, path: str, params: dict[str, str]) -> bytes:
        """The raw bytes of a GET (e.g. a PNG); an error answer raises ApiFailed."""
        assert self.session is not None
        async with self.session.get(f"{self.url}{path}", params=params) as r:
            if r.status >= 400:
                raise ApiFailed(r.status, await r.json(content_type=None))
            return await r.read()


def load_body(path: Path) -> dict[str, Any]:
    """The batch body in ``path`` (YAML or JSON; ``-`` reads stdin)."""
    from comfyflow.cli_errors import existing_file

    path = existing_file("FILE", path)
    try:
        text = typer.get_text_stream("stdin").read() if str(path) == "-" else path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error[/red]: FILE: {path}: cannot read it ({exc})", highlight=False)
        raise typer.Exit(2) from None
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        err.print(f"[red]{path} is not valid YAML or JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    if not isinstance(body, dict):
        err.print(f'[red]{path} must hold a mapping with "items", or "base" and "sweep".[/red]')
        raise typer.Exit(2)
    return body


async def watch(api: Api, batch_id: str, *, every: float = 0.5) -> dict[str, Any]:
    """Show the batch's progress until every item has finished; returns the final batch."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err) as bar:
        batch = await api.call("GET", f"/api/v1/batches/{batch_id}?limit=0")
        task = bar.add_task(batch["name"] or batch_id[:12], total=batch["total"], counts="")
        while True:
            counts = batch["counts"]
            shown = " ".join(f"{k} {v}" for k, v in counts.items() if v)
            finished = batch["total"] - counts.get("queued", 0) - counts.get("running", 0)
            bar.update(task, completed=finished, counts=shown)
            if batch["status"] not in ACTIVE:
                return batch  # type: ignore[no-any-return]
            await asyncio.sleep(every)
            batch = await api.call("GET", f"/api/v1/batches/{batch_id}?limit=0")


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ApiFailed as exc:
        err.print(f"[red]{exc}[/red]")
        details = exc.error.get("details")
        if isinstance(details, list):
            for d in details[:10]:
                err.print(f"  {d.get('field', '')}: {d.get('message', '')}")
        raise typer.Exit(1) from None
    except aiohttp.ClientError as exc:
        err.print(f"[red]Cannot reach the API: {exc}[/red]")
        raise typer.Exit(1) from None


def _ended(batch: dict[str, Any]) -> None:
    err.print(
        f"batch {batch['batch_id']} {batch['status']}: {json.dumps({k: v for k, v in batch['counts'].items() if v})}"
    )
    if batch["status"] != "succeeded":
        raise typer.Exit(1)


@batch_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="YAML or JSON: items, or base + sweep ('-' reads stdin).")],
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Show progress until every item finished.")] = False,
    priority: Annotated[str | None, typer.Option(help="high, normal or low (overrides the file).")] = None,
    name: Annotated[str | None, typer.Option(help="Name shown in the Prefect UI (overrides the file).")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Submit a batch; print its id (stdout). With --watch, follow it; the exit code is 0 only if all succeeded."""
    body = load_body(file)
    if priority:
        body["priority"] = priority
    if name:
        body["name"] = name

    async def main() -> dict[str, Any]:
        async with Api(url, api_key) as api:
            batch = await api.call("POST", "/api/v1/batches", body)
            print(batch["batch_id"], flush=True)
            err.print(f"batch {batch['batch_id']}: {batch['total']} items queued")
            return await watch(api, batch["batch_id"]) if watch_ else batch

    batch = _run(main())
    if watch_:
        _ended(batch)


@batch_app.command("watch")
def watch_cmd(batch_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Show a batch's progress until every item finished."""

    async def main() -> dict[str, Any]:
        async with Api(url, api_key) as api:
            return await watch(api, batch_id)

    _ended(_run(main()))


@batch_app.command("status")
def status(
    batch_id: str,
    items: Annotated[int, typer.Option(help="Also list this many items (job id, status, artifact URLs).")] = 0,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Print the batch as JSON (stdout)."""

    async def main() -> Any:
        async with Api(url, api_key) as api:
            return await api.call("GET", f"/api/v1/batches/{batch_id}?limit={items}")

    print(json.dumps(_run(main()), indent=2))


@batch_app.command("cancel")
def cancel(batch_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Cancel the items not finished yet."""

    async def main() -> Any:
        async with Api(url, api_key) as api:
            return await api.call("DELETE", f"/api/v1/batches/{batch_id}")

    batch = _run(main())
    err.print(f"batch {batch_id}: {json.dumps(batch.get('canceled', {}))}")


@batch_app.command("retry")
def retry(
    batch_id: str,
    canceled: Annotated[bool, typer.Option(help="Also re-run the canceled items.")] = False,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Show progress until every item finished.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Run the failed items again."""

    async def main() -> dict[str, Any]:
        async with Api(url, api_key) as api:
            query = "?canceled=true" if canceled else ""
            batch = await api.call("POST", f"/api/v1/batches/{batch_id}/retry{query}")
            err.print(f"batch {batch_id}: {batch['retried']} items queued again")
            return await watch(api, batch_id) if watch_ else batch

    batch = _run(main())
    if watch_:
        _ended(batch)


@batch_app.command("grid")
def grid(
    batch_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to save the PNG ('-' writes stdout).")],
    x: Annotated[str | None, typer.Option(help="Swept field along x (default: the first).")] = None,
    y: Annotated[str | None, typer.Option(help="Swept field along y (default: the second).")] = None,
    z: Annotated[str | None, typer.Option(help="Third swept field: one sheet per value.")] = None,
    z_index: Annotated[int | None, typer.Option(help="Which value of z (0-based).")] = None,
    fix: Annotated[str | None, typer.Option(help="Other swept fields held at a value: name:index,...")] = None,
    cell: Annotated[int | None, typer.Option(help="Cell edge in pixels (16..512; default: fits the sheet).")] = None,
    offset: Annotated[int | None, typer.Option(help="Items list: first item shown.")] = None,
    limit: Annotated[int | None, typer.Option(help="Items list: how many items.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Save the batch's contact sheet (GET /api/v1/batches/{id}/grid): finished items' images, placeholders for
    the rest."""
    given = {"x": x, "y": y, "z": z, "z_index": z_index, "fix": fix, "cell": cell, "offset": offset, "limit": limit}
    params = {k: str(v) for k, v in given.items() if v is not None}

    async def main() -> bytes:
        async with Api(url, api_key) as api:
            return await api.fetch(f"/api/v1/batches/{batch_id}/grid", params)

    data = _run(main())
    if str(output) == "-":
        typer.get_binary_stream("stdout").write(data)
        return
    output.write_bytes(data)
    err.print(f"contact sheet of batch {batch_id} saved to {output} ({len(data)} bytes)")
