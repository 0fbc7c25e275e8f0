"""``comfyflow admin``: users and API keys, straight in the key store (no server needed, no open endpoint).

This is how the first key is made: ``comfyflow admin create-key --role internal --name ops`` prints a key once
(stdout; the explanation goes to stderr). Redis is the configured one (``COMFYFLOW_REDIS_URL``) or the home's
embedded server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from comfyflow.errors import ComfyflowError
from comfyflow.models import Role
from comfyflow.plugins.auth import KeyAdmin
from comfyflow.settings import Settings, load_settings

T = TypeVar("T")
admin_app = typer.Typer(help="Users and API keys (INTERNAL keys reach the admin API too).", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

RoleOpt = Annotated[Role, typer.Option("--role", help="free, pro or internal.", case_sensitive=False)]


def _settings() -> Settings:
    try:
        return load_settings()
    except ComfyflowError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


@contextlib.asynccontextmanager
async def open_key_admin(settings: Settings) -> AsyncIterator[KeyAdmin]:
    """The key store of the first configured auth plugin that keeps keys (``apikey`` when auth is off, so keys
    can be made before it is turned on)."""
    from comfyflow.core.redis_conn import open_redis
    from comfyflow.plugins import registry

    token = None
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
    else:  # the embedded Redis, stopped again on exit when no other process uses it (embedded/sessions.py)
        from comfyflow.embedded import ensure_redis, sessions

        token = await asyncio.to_thread(sessions.join, settings.resolved_home)
        url = await asyncio.to_thread(ensure_redis, settings.resolved_home)
    redis = open_redis(settings, url)
    try:
        for name in dict.fromkeys([*settings.auth_plugins, "apikey"]):
            plugin = registry.load("auth", name)(settings, redis=redis)
            if isinstance(plugin, KeyAdmin):
                yield plugin
                return
        raise ComfyflowError("No installed auth plugin keeps API keys; install comfyflow with its apikey plugin.")
    finally:
        await redis.aclose()
        if token is not None:
            from comfyflow.embedded import sessions

            await asyncio.to_thread(sessions.leave, settings.resolved_home, token)


def _run(work: Callable[[KeyAdmin], Awaitable[T]]) -> T:
    settings = _settings()

    async def main() -> T:
        async with open_key_admin(settings) as store:
            return await work(store)

    try:
        return asyncio.run(main())
    except ComfyflowError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@admin_app.command("create-key")
def create_key(
    name: Annotated[str, typer.Option("--name", help="Name of the key (and of the new user).")],
    role: RoleOpt = Role.FREE,
    user: Annotated[str | None, typer.Option("--user", help="Add the key to this existing user id instead.")] = None,
    expires_days: Annotated[float | None, typer.Option("--expires-days", min=0.001, help="Lifetime in days.")] = None,
) -> None:
    """Create a key (for a new user with --role, or for --user). The key is printed once, on stdout."""
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None

    async def work(store: KeyAdmin) -> Any:
        owner = await store.get_user(user) if user else await store.create_user(name, role)
        if owner is None:
            raise ComfyflowError(f"No user {user!r}; see `comfyflow admin list-users`.")
        return owner, await store.create_key(owner.id, name, expires_at=expires)

    owner, issued = _run(work)
    err.print(f"Key {issued.info.key_id} for user {owner.id} ({owner.name}, role {owner.role.value}). "
              "It is shown only now; the server keeps its hash. Use it as 'Authorization: Bearer <key>'.")  # fmt: skip
    print(issued.key)


@admin_app.command("list-keys")
def list_keys(user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None) -> None:
    """Every key (or one user's): id, user, name, status, dates. Never the key itself."""
    keys = _run(lambda store: store.list_keys(user))
    table = Table("name", "status", "created", "expires", "last used")
    table.columns.insert(0, Column("user", no_wrap=True))
    table.columns.insert(0, Column("key id", no_wrap=True))
    for k in keys:
        table.add_row(k.key_id, k.user_id, k.name, k.status, _when(k.created_at), _when(k.expires_at),
                      _when(k.last_used_at))  # fmt: skip
    out.print(table)


@admin_app.command("revoke-key")
def revoke_key(key_id: Annotated[str, typer.Argument(help="The key id (as listed).")]) -> None:
    """Revoke a key; it stops working at once."""
    info = _run(lambda store: store.revoke_key(key_id))
    err.print(f"Key {info.key_id} ({info.name}) of user {info.user_id} is {info.status}.")


@admin_app.command("create-user")
def create_user(
    name: Annotated[str, typer.Option("--name", help="The user's name.")], role: RoleOpt = Role.FREE
) -> None:
    """Create a user without a key; prints its id."""
    created = _run(lambda store: store.create_user(name, role))
    print(created.id)


@admin_app.command("list-users")
def list_users() -> None:
    """Every user: id, name, role, whether disabled."""
    users = _run(lambda store: store.list_users())
    table = Table("name", "role", "disabled", "created")
    table.columns.insert(0, Column("user id", no_wrap=True))
    for u in users:
        table.add_row(u.id, u.name, u.role.value, "yes" if u.disabled else "no", _when(u.created_at))
    out.print(table)


@admin_app.command("set-role")
def set_role(
    user_id: Annotated[str, typer.Argument()], role: Annotated[Role, typer.Argument(case_sensitive=False)]
) -> None:
    """Change a user's role (its keys' limits change at once)."""
    changed = _run(lambda store: store.update_user(user_id, role=role))
    err.print(f"User {changed.id} ({changed.name}) is now {changed.role.value}.")


@admin_app.command("disable-user")
def disable_user(user_id: Annotated[str, typer.Argument()]) -> None:
    """Disable a user: every key of it stops working at once."""
    changed = _run(lambda store: store.update_user(user_id, disabled=True))
    err.print(f"User {changed.id} ({changed.name}) is disabled.")


@admin_app.command("enable-user")
def enable_user(user_id: Annotated[str, typer.Argument()]) -> None:
    """Enable a disabled user again."""
    changed = _run(lambda store: store.update_user(user_id, disabled=False))
    err.print(f"User {changed.id} ({changed.name}) is enabled.")
