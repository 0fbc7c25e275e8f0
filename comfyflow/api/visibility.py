"""Applies comfyflow/core/visibility.py to requests: INTERNAL callers see everything, tenants no internals."""

from __future__ import annotations

from typing import Any

from sanic import Request

from comfyflow.core.visibility import redact_job, redact_run
from comfyflow.models import Role


def is_internal(request: Request) -> bool:
    principal = getattr(request.ctx, "principal", None)
    return principal is not None and principal.role == Role.INTERNAL


def job_for(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    """A dumped job as this caller may see it (in place): everything for INTERNAL, no internals for tenants."""
    return data if is_internal(request) else redact_job(data)


def run_for(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    """A dumped pipeline run or batch as this caller may see it (in place)."""
    return data if is_internal(request) else redact_run(data)
