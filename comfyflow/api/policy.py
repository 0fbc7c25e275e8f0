"""Who may do what: authentication and per-role rules, as the API layer sees them.

The default ``OpenPolicy`` (COMFYFLOW_AUTH=none) treats every caller as the local INTERNAL user; the auth plugins
replace it with real principals and limits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from sanic import Request

from comfyflow.models import Principal, Role

LOCAL = Principal(id="local", role=Role.INTERNAL, name="local (auth disabled)")


class Policy(Protocol):
    async def authenticate(self, request: Request) -> Principal:
        """The caller. Raises Unauthorized for missing or bad credentials."""
        ...

    async def check_request(self, principal: Principal, request: Any) -> None:
        """Raises Forbidden/ValidationError when this caller may not submit this request."""
        ...

    async def count_request(
        self, request: Request, principal: Principal, read: str | None = None
    ) -> dict[str, str] | None:
        """Count a request whose rate limit the policy deferred to its route (``request.ctx.rate_limit``).
        ``read``: a Redis hash the route reads, read in the same round trip and returned.
        Raises RateLimited when over the limit."""
        ...

    async def daily_limit(self, principal: Principal) -> tuple[int | None, str]:
        """(daily job limit or None for unlimited, the UTC day it counts against)."""
        ...

    def job_fields(self, principal: Principal) -> dict[str, Any]:
        """Fields stored with each job this caller submits (``role``, ``retention_s``); pass as submit's extra."""
        ...

    async def check_batch(self, principal: Principal, size: int) -> None:
        """Raises Forbidden when this caller may not send a batch of ``size`` items (its role's items per batch)."""
        ...


class OpenPolicy:
    async def authenticate(self, request: Request) -> Principal:
        return LOCAL

    async def check_request(self, principal: Principal, request: Any) -> None:
        return None

    async def count_request(
        self, request: Request, principal: Principal, read: str | None = None
    ) -> dict[str, str] | None:
        return None

    async def daily_limit(self, principal: Principal) -> tuple[int | None, str]:
        return None, datetime.now(UTC).strftime("%Y%m%d")

    def job_fields(self, principal: Principal) -> dict[str, Any]:
        return {"role": principal.role.value}

    async def check_batch(self, principal: Principal, size: int) -> None:
        return None
