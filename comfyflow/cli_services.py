"""``comfyflow services start|prepare|stop``: the embedded Redis, PostgreSQL and Prefect server of a home."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from comfyflow.errors import ComfyflowError
from comfyflow.settings import Settings, load_settings

services_app = typer.Typer(help="The embedded Redis, PostgreSQL and Prefect server of this home.")
console = Console(stderr=True)


def _settings() -> Settings:
    from comfyflow import logs

    try:
        settings = load_settings()
    except ComfyflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, settings.log_format)
    return settings


@services_app.command("start")
def services_start() -> None:
    """Start (or find) the embedded services, keep them running for every later command, print their URLs."""
    from comfyflow.embedded import ensure_services, sessions

    settings = _settings()
    sessions.keep(settings.resolved_home)
    urls = asyncio.run(ensure_services(settings))
    redis_shown = urls.redis_url.split("@")[-1]
    console.print(f"redis: {redis_shown}\nprefect: {urls.prefect_api_url or 'disabled'}")
    console.print("they keep running after every command until `comfyflow services stop`")


@services_app.command("prepare")
def services_prepare() -> None:
    """Build the PostgreSQL template with Prefect's database migrated, which every new home copies (scripts/setup
    runs this; otherwise the first new home builds it)."""
    from comfyflow.embedded.template import ensure_template

    _settings()
    console.print(f"embedded database template ready in {ensure_template()}")


@services_app.command("stop")
def services_stop() -> None:
    """Stop this home's embedded services (data is kept); later commands stop the ones they start on exit."""
    from comfyflow.embedded import sessions, stop_services

    settings = _settings()
    sessions.keep(settings.resolved_home, False)
    stop_services(settings.resolved_home)
    console.print(f"stopped the embedded services of {settings.resolved_home}")
