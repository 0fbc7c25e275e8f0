"""The auth extension point (entry-point group ``comfyflow.auth``): who is calling, from plain headers.

An entry point names an :class:`AuthFactory`; the API builds one plugin per process with the settings and the
shared Redis client, and asks each configured plugin in turn (``COMFYFLOW_AUTH=apikey,jwt``). The shape is
starlette's: no credentials of a plugin's scheme -> ``None`` (the next plugin may try); credentials of its scheme
that are not valid -> raise :class:`~comfyflow.errors.Unauthorized`. The API answers every bad credential with one
and the same 401, so the message a plugin raises is for logs, never for the caller.

Plugins that keep users and API keys (the first-party ``apikey`` plugin) also implement :class:`KeyAdmin`, which
the admin API and ``comfyflow admin`` use. Plugins import neither sanic nor prefect.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from comfyflow.models import Principal, Role


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


@runtime_checkable
class AuthPlugin(Protocol):
    """One authentication scheme."""

    #: Short name of the scheme, for logs (e.g. "apikey", "jwt").
    scheme: str

    async def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller the request's headers name.

        Args:
            headers: the request headers, names in lower case.
        Returns:
            The principal (its ``id`` owns jobs, batches and uploads), or None when the headers carry no
            credential of this scheme (no ``Authorization`` header, another scheme, a token not in this scheme's
            format).
        Raises:
            Unauthorized: the credential is of this scheme but not valid: malformed, wrong checksum, unknown,
                tampered, expired, not yet valid, revoked, or its user disabled.
        """
        ...

    async def aclose(self) -> None:
        """Release what the plugin opened itself (never the Redis client it was given)."""
        ...


class AuthFactory(Protocol):
    """What a ``comfyflow.auth`` entry point names."""

    def __call__(self, settings: Any, *, redis: Any) -> AuthPlugin:
        """Build the plugin for one process.

        Args:
            settings: the process's :class:`~comfyflow.settings.Settings`.
            redis: the process's shared ``redis.asyncio.Redis`` client (keys under ``settings.key_prefix``).
        Raises:
            ConfigError: when the settings the plugin needs are missing or invalid.
        """
        ...


class User(BaseModel):
    """A user of the API: owns keys, jobs and uploads; its role sets its limits."""

    id: str
    name: str
    role: Role
    disabled: bool = False
    created_at: datetime


class KeyInfo(BaseModel):
    """An API key as listed: never the key itself, never its hash."""

    key_id: str
    user_id: str
    name: str
    prefix: str = Field(description="The key's public start (prefix and key id), to recognise it.")
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    status: str = Field(description="active, expired or revoked.")


class IssuedKey(BaseModel):
    """A key just created: ``key`` is shown this once and never stored."""

    key: str
    info: KeyInfo


@runtime_checkable
class KeyAdmin(Protocol):
    """Users and API keys, for plugins that keep them."""

    async def create_user(self, name: str, role: Role) -> User:
        """Create a user. Raises ValidationError for an empty or too long name."""
        ...

    async def get_user(self, user_id: str) -> User | None:
        """The user, or None."""
        ...

    async def list_users(self) -> list[User]:
        """Every user, oldest first."""
        ...

    async def update_user(self, user_id: str, *, role: Role | None = None, disabled: bool | None = None) -> User:
        """Change a user's role and/or disable (or enable) it; a disabled user's keys stop working at once.

        Raises:
            NotFound: no such user.
        """
        ...

    async def create_key(self, user_id: str, name: str, *, expires_at: datetime | None = None) -> IssuedKey:
        """Issue a key for a user. Only its SHA-256 hash is stored.

        Raises:
            NotFound: no such user.
            ValidationError: a bad name or an expiry in the past.
        """
        ...

    async def list_keys(self, user_id: str | None = None) -> list[KeyInfo]:
        """Keys of one user (or of everyone), oldest first, revoked and expired ones included."""
        ...

    async def get_key(self, key_id: str) -> KeyInfo | None:
        """One key's record, or None."""
        ...

    async def revoke_key(self, key_id: str) -> KeyInfo:
        """Revoke a key (idempotent); it stops working at once.

        Raises:
            NotFound: no such key.
        """
        ...

    async def create_first_key(self, name: str) -> IssuedKey | None:
        """When no key was ever issued: create an INTERNAL user named ``name`` and a key for it, once, even when
        several processes start together. Returns None when keys exist already."""
        ...


__all__ = ["AuthFactory", "AuthPlugin", "IssuedKey", "KeyAdmin", "KeyInfo", "User", "bearer_token"]
