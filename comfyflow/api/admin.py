"""Users and API keys: the admin API (INTERNAL keys only, always) and self-service for one's own keys.

The first key never comes from an open endpoint: ``comfyflow admin create-key`` makes it, or
:func:`bootstrap_first_key` when a server starts on an empty key store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow.api.http import json_body
from comfyflow.api.policy import LOCAL
from comfyflow.core.owners import set_owner_limits
from comfyflow.core.runtime import Runtime
from comfyflow.errors import Forbidden, NotFound
from comfyflow.models import Role
from comfyflow.plugins import registry
from comfyflow.plugins.auth import KeyAdmin

bp = Blueprint("admin", url_prefix="/api/v1")


@bp.on_response
async def _forget_principals(request: Request, response: HTTPResponse) -> None:
    """A key or user changed through this process: authenticated principals cached here are stale at once."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    for cache in (getattr(request.app.ctx.policy, name, None) for name in ("principals", "recorded_limits")):
        if cache is not None:
            cache.clear()


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    role: Role = Role.FREE


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> UserChange:
        if self.role is None and self.disabled is None:
            raise ValueError("give role and/or disabled")
        return self


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    expires_at: datetime | None = Field(default=None, description="When the key stops working (ISO 8601).")
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, description="Or: lifetime in days.")

    def expiry(self) -> datetime | None:
        if self.expires_in_days is not None:
            return datetime.now(UTC) + timedelta(days=self.expires_in_days)
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            return self.expires_at.replace(tzinfo=UTC)
        return self.expires_at


def _store(request: Request) -> KeyAdmin:
    store = getattr(request.app.ctx.policy, "key_admin", None)
    if store is None:
        auth = request.app.ctx.settings.auth
        raise NotFound(
            f"This server keeps no API keys (COMFYFLOW_AUTH={auth}); add 'apikey' to COMFYFLOW_AUTH to manage them.",
            details={"auth": auth},
        )
    return store  # type: ignore[no-any-return]


def _admin(request: Request) -> KeyAdmin:
    """The key store, for an INTERNAL caller with real credentials (never the auth-off local user)."""
    principal = request.ctx.principal
    if principal.role != Role.INTERNAL or principal.id == LOCAL.id:
        raise Forbidden(
            "Admin endpoints need an INTERNAL API key; create one with "
            "`comfyflow admin create-key --role internal --name ops`.",
            details={"role": principal.role.value},
        )
    return _store(request)


async def _apply_limits(request: Request, user_id: str, role: Role) -> None:
    """A role change takes effect at once, also for the running-job limit the workers enforce."""
    limits = request.app.ctx.settings.limits.for_role(role.value)
    rt = request.app.ctx.rt
    await set_owner_limits(rt.redis, rt.store.keys, user_id, max_running=limits.concurrent_jobs, role=role.value)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


# --- admin -------------------------------------------------------------------------------------------------------


@bp.get("/admin/users")
async def list_users(request: Request) -> HTTPResponse:
    return json({"items": [_dump(u) for u in await _admin(request).list_users()]})


@bp.post("/admin/users")
async def create_user(request: Request) -> HTTPResponse:
    store = _admin(request)
    body = NewUser.model_validate(json_body(request, max_bytes=16384))
    user = await store.create_user(body.name, body.role)
    await _apply_limits(request, user.id, user.role)
    return json(_dump(user), status=201, headers={"Location": f"/api/v1/admin/users/{user.id}"})


@bp.get("/admin/users/<user_id:str>")
async def get_user(request: Request, user_id: str) -> HTTPResponse:
    user = await _admin(request).get_user(user_id)
    if user is None:
        raise NotFound(f"No user {user_id!r}.", details={"user_id": user_id})
    return json(_dump(user))


@bp.patch("/admin/users/<user_id:str>")
async def update_user(request: Request, user_id: str) -> HTTPResponse:
    """Change a user's role, or disable (``{"disabled": true}``) or enable it."""
    store = _admin(request)
    change = UserChange.model_validate(json_body(request, max_bytes=16384))
    user = await store.update_user(user_id, role=change.role, disabled=change.disabled)
    if change.role is not None:
        await _apply_limits(request, user.id, user.role)
    return json(_dump(user))


@bp.get("/admin/users/<user_id:str>/keys")
async def list_user_keys(request: Request, user_id: str) -> HTTPResponse:
    store = _admin(request)
    if await store.get_user(user_id) is None:
        raise NotFound(f"No user {user_id!r}.", details={"user_id": user_id})
    return json({"items": [_dump(k) for k in await store.list_keys(user_id)]})


@bp.post("/admin/users/<user_id:str>/keys")
async def create_key(request: Request, user_id: str) -> HTTPResponse:
    """Issue a key; the answer holds it once (``key``), the server keeps only its hash."""
    store = _admin(request)
    body = NewKey.model_validate(json_body(request, max_bytes=16384))
    issued = await store.create_key(user_id, body.name, expires_at=body.expiry())
    out = {"key": issued.key, **_dump(issued.info)}
    return json(out, status=201, headers={"Cache-Control": "no-store"})


@bp.get("/admin/keys")
async def list_all_keys(request: Request) -> HTTPResponse:
    return json({"items": [_dump(k) for k in await _admin(request).list_keys()]})


@bp.delete("/admin/keys/<key_id:str>")
async def revoke_any_key(request: Request, key_id: str) -> HTTPResponse:
    return json(_dump(await _admin(request).revoke_key(key_id)))


# --- self-service ---------------------------------------------------------------------------------------------


@bp.get("/me")
async def me(request: Request) -> HTTPResponse:
    """Who the credentials name, and the limits of their role."""
    principal = request.ctx.principal
    limits = request.app.ctx.settings.limits.for_role(principal.role.value)
    body = {**principal.model_dump(mode="json"), "limits": limits.model_dump(mode="json")}
    return json(body)


@bp.get("/keys")
async def my_keys(request: Request) -> HTTPResponse:
    """The caller's own keys (any valid key may list its user's keys)."""
    store = _store(request)
    return json({"items": [_dump(k) for k in await store.list_keys(request.ctx.principal.id)]})


@bp.delete("/keys/<key_id:str>")
async def revoke_my_key(request: Request, key_id: str) -> HTTPResponse:
    """Revoke one of the caller's own keys (404 for anyone else's)."""
    store = _store(request)
    info = await store.get_key(key_id)
    if info is None or info.user_id != request.ctx.principal.id:
        raise NotFound(f"No key {key_id!r} among yours.", details={"key_id": key_id})
    return json(_dump(await store.revoke_key(key_id)))


# --- the first key ------------------------------------------------------------------------------------------------


async def bootstrap_first_key(runtime: Runtime, *, name: str = "admin") -> str | None:
    """On an empty key store, create an INTERNAL user and key once (even with several servers starting) and
    return the key, to be printed once; None when keys exist or auth keeps no keys."""
    settings = runtime.settings
    for plugin_name in settings.auth_plugins:
        plugin = registry.load("auth", plugin_name)(settings, redis=runtime.redis)
        if isinstance(plugin, KeyAdmin):
            issued = await plugin.create_first_key(name)
            return issued.key if issued is not None else None
    return None


def bootstrap_message(key: str, base_url: str) -> str:
    """What to print, once, next to a bootstrapped key."""
    return (
        "No API key existed, so an INTERNAL key was created. It is shown only now; store it safely:\n\n"
        f"    {key}\n\n"
        f"Use it:   curl -H 'Authorization: Bearer {key}' {base_url.rstrip('/')}/api/v1/me\n"
        "Make more: POST /api/v1/admin/users and /api/v1/admin/users/<id>/keys with it, or "
        "`comfyflow admin create-key --role free --name alice`."
    )
