"""The real :class:`~comfyflow.api.policy.Policy`: auth plugins, per-role limits, request rate limits and the
rules for raw ComfyUI graphs.

Used by ``create_app`` unless ``COMFYFLOW_AUTH=none``. Every bad credential gets the same 401; what was wrong is
logged, never told.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from sanic import Request

from comfyflow.api.auth_cache import PrincipalCache, Recently
from comfyflow.auth_settings import RoleLimits
from comfyflow.core.owners import set_owner_limits
from comfyflow.core.ratelimit import Decision, RateLimiter
from comfyflow.core.runtime import Runtime
from comfyflow.errors import ConfigError, Forbidden, RateLimited, Unauthorized, ValidationError
from comfyflow.models import Principal, RawGraphRequest, Role
from comfyflow.plugins import registry
from comfyflow.plugins.auth import AuthPlugin, KeyAdmin
from comfyflow.settings import Settings

log = structlog.get_logger("comfyflow.auth")

#: Routes (method, pattern) whose request is counted against the rate limit in the same Redis round trip as their
#: own work (the submit script; a pipeline with the job's HGETALL); on their error paths before that, by
#: :meth:`AuthPolicy.count_request` (so every request counts).
DEFERRED_RATE_LIMIT = frozenset({("POST", "api/v1/jobs"), ("GET", "api/v1/jobs/<job_id:str>")})
UNAUTHORIZED = "Missing or invalid credentials; send 'Authorization: Bearer <API key>'."
WWW_AUTHENTICATE = 'Bearer realm="comfyflow"'
_DRIVE = re.compile(r"^[A-Za-z]:")


_day: tuple[str, float] = ("", 0.0)  # (YYYYMMDD, when it ends: epoch seconds)


def utc_day(now: float | None = None) -> str:
    """Today's date in UTC as YYYYMMDD (the daily quota's counter), formatted once a day rather than per submit."""
    global _day
    now = time.time() if now is None else now
    if not _day[1] - 86400 <= now < _day[1]:
        start = now // 86400 * 86400
        _day = (datetime.fromtimestamp(start, UTC).strftime("%Y%m%d"), start + 86400)
    return _day[0]


def apply_rate_decision(request: Request, principal: Principal, decision: Decision) -> None:
    """Put the X-RateLimit-* headers on the response; raise RateLimited when the request was refused."""
    extra = getattr(request.ctx, "extra_headers", None)
    if extra is None:
        extra = request.ctx.extra_headers = {}
    extra.update(decision.headers())
    if not decision.allowed:
        raise RateLimited(
            f"More than {decision.limit} requests per minute for role {principal.role.value}; retry in "
            f"{max(1, round(decision.reset_seconds))} s.",
            retry_after=decision.reset_seconds,
            details={"limit": decision.limit, "window_seconds": 60, "role": principal.role.value},
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_safe_bind(settings: Settings, host: str | None = None) -> None:
    """Refuse to serve without auth on an address other machines can reach.

    Raises:
        ConfigError: when COMFYFLOW_AUTH=none and the API binds to a non-loopback address.
    """
    host = host or settings.api_host
    if not settings.auth_plugins and not is_loopback(host):
        raise ConfigError(
            f"COMFYFLOW_AUTH=none serves every caller as INTERNAL, so it is refused on COMFYFLOW_API_HOST={host!r}, "
            "which other machines can reach. Bind to 127.0.0.1, or turn auth on (COMFYFLOW_AUTH=apikey) and create "
            "a key with `comfyflow admin create-key --role internal --name ops`."
        )


def check_auth_settings(settings: Settings) -> None:
    """Fail fast at start: auth off on a public address, or an auth plugin that is not installed.

    Raises:
        ConfigError, PluginError.
    """
    require_safe_bind(settings)
    for name in settings.auth_plugins:
        registry.load("auth", name)


def load_plugins(settings: Settings, redis: Any) -> list[AuthPlugin]:
    """The configured auth plugins, built for this process. Raises PluginError or ConfigError."""
    return [registry.load("auth", name)(settings, redis=redis) for name in settings.auth_plugins]


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}.{i}")
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _strings(item, f"{path}.{k}")


def is_path_escape(value: str) -> bool:
    """A value naming a file outside ComfyUI's folders: absolute (``/``, ``\\``, ``C:``, ``~``) or with ``..``."""
    norm = value.replace("\\", "/")
    return norm.startswith(("/", "~")) or bool(_DRIVE.match(norm)) or ".." in norm.split("/") or "\x00" in norm


class AuthPolicy:
    """Authenticates with the configured plugins (first that recognises the credential wins) and applies the
    caller's role limits."""

    def __init__(self, settings: Settings, plugins: list[AuthPlugin], runtime: Runtime) -> None:
        if not plugins:
            raise ConfigError("AuthPolicy needs at least one auth plugin; COMFYFLOW_AUTH names none.")
        self.settings = settings
        self.plugins = plugins
        self.redis = runtime.redis
        self.keys = runtime.store.keys
        self.ratelimiter = RateLimiter(runtime.redis, runtime.store.keys, hot=getattr(runtime, "hot", None))
        self.allowlist = frozenset(settings.graph_node_allowlist)
        #: Principals reused for a second (revocations elsewhere take effect within it); see api/auth_cache.py.
        self.principals = PrincipalCache()
        #: The running-job limit and role last recorded per owner (renewed in Redis once a minute at most).
        self.recorded_limits = Recently(60.0)

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> AuthPolicy:
        return cls(runtime.settings, load_plugins(runtime.settings, runtime.redis), runtime)

    @property
    def key_admin(self) -> KeyAdmin | None:
        """The first plugin that keeps users and keys (for the admin API), if any."""
        return next((p for p in self.plugins if isinstance(p, KeyAdmin)), None)

    def limits(self, principal: Principal) -> RoleLimits:
        return self.settings.limits.for_role(principal.role.value)

    # --- Policy ---------------------------------------------------------------------------------------------
    async def authenticate(self, request: Request) -> Principal:
        extra = getattr(request.ctx, "extra_headers", None)
        if extra is None:
            extra = request.ctx.extra_headers = {}
        principal = await self.identify(request.headers, extra)
        limits = self.limits(principal)
        request.ctx.url_ttl = limits.url_ttl_seconds
        if limits.requests_per_minute is not None:
            route = getattr(request, "route", None)
            if route is not None and (request.method, str(route.path).strip("/")) in DEFERRED_RATE_LIMIT:
                request.ctx.rate_limit = limits.requests_per_minute  # counted by the route, with its own work
            else:
                await self.count_request(request, principal)
        return principal

    async def count_request(
        self, request: Request, principal: Principal, read: str | None = None
    ) -> dict[str, str] | None:
        """Count one request against the caller's rate limit (raises RateLimited when over it). With ``read``,
        the hash at that key is read in the same script (one round trip) and returned."""
        limit = self.limits(principal).requests_per_minute
        if limit is None:
            return await self._read(read) if read is not None else None
        if read is None:
            apply_rate_decision(request, principal, await self.ratelimiter.hit(principal.id, limit))
            return None
        decision, raw = await self.ratelimiter.hit_and_read(principal.id, limit, read)
        apply_rate_decision(request, principal, decision)
        return raw

    async def _read(self, key: str) -> dict[str, str]:
        raw: dict[Any, Any] = await self.redis.hgetall(key)  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def identify(self, headers: Any, extra_headers: dict[str, str] | None = None) -> Principal:
        """The principal the headers name, or Unauthorized with the one message for every bad credential."""
        if len(headers.getall("authorization", [])) > 1:
            return self._refuse(extra_headers, "several Authorization headers")
        credential = headers.get("authorization")
        if credential and (cached := self.principals.get(credential)) is not None:
            return cached
        plain = {k.lower(): v for k, v in headers.items()}
        for plugin in self.plugins:
            try:
                principal = await plugin.authenticate(plain)
            except Unauthorized as exc:
                return self._refuse(extra_headers, f"{plugin.scheme}: {exc.message}")
            if principal is not None:
                if credential:
                    self.principals.put(credential, principal)
                return principal
        return self._refuse(extra_headers, "no credentials" if "authorization" not in plain else "unknown scheme")

    @staticmethod
    def _refuse(extra_headers: dict[str, str] | None, reason: str) -> Any:
        log.info("credentials refused", reason=reason)
        if extra_headers is not None:
            extra_headers["WWW-Authenticate"] = WWW_AUTHENTICATE
        raise Unauthorized(UNAUTHORIZED)

    async def check_request(self, principal: Principal, request: Any) -> None:
        limits = self.limits(principal)
        if isinstance(request, RawGraphRequest):
            if principal.role != Role.INTERNAL:
                raise Forbidden(
                    f"Raw ComfyUI graphs are for INTERNAL callers; your role is {principal.role.value}. Send a "
                    "txt2img or img2img request instead.",
                    details={"role": principal.role.value, "field": "workflow"},
                )
            self.check_graph(request.workflow, limits)
        else:
            self._check_size(limits, principal.role, "batch_size", request.batch_size, request.width, request.height)
        recorded = (limits.concurrent_jobs, principal.role.value)
        if not self.recorded_limits.fresh(principal.id, recorded):  # a Redis round trip a minute, not per submit
            await set_owner_limits(self.redis, self.keys, principal.id, max_running=recorded[0], role=recorded[1])
            self.recorded_limits.put(principal.id, recorded)

    def check_graph(self, workflow: dict[str, Any], limits: RoleLimits) -> None:
        """Node classes on the allow-list (422), no paths in inputs (422), sizes within the role's limits (403)."""
        problems = []
        for node_id, node in workflow.items():
            if node.class_type not in self.allowlist:
                field = f"workflow.{node_id}.class_type"
                problems.append({"field": field, "value": node.class_type, "message": "not on the allow-list"})
            for path, value in _strings(node.inputs, f"workflow.{node_id}.inputs"):
                if is_path_escape(value):
                    message = "a path outside ComfyUI's folders; use a plain file name"
                    problems.append({"field": path, "value": value[:200], "message": message})
        if problems:
            classes = sorted({p["value"] for p in problems if p["field"].endswith(".class_type")})
            first = (
                f"node classes not allowed: {', '.join(classes)}" if classes else f"{problems[0]['field']} is a path"
            )
            raise ValidationError(
                f"The graph cannot run here: {first}. Allowed classes are listed in COMFYFLOW_GRAPH_NODE_ALLOWLIST.",
                details=problems,
            )
        for node_id, node in workflow.items():
            width, height, batch = (node.inputs.get(k) for k in ("width", "height", "batch_size"))
            ints = [isinstance(v, int) and not isinstance(v, bool) for v in (width, height)]
            if all(ints) or (isinstance(batch, int) and not isinstance(batch, bool)):
                self._check_size(limits, Role.INTERNAL, f"workflow.{node_id}.inputs.batch_size",
                                 batch if isinstance(batch, int) else 1,
                                 width if all(ints) else 1, height if all(ints) else 1)  # fmt: skip

    @staticmethod
    def _check_size(limits: RoleLimits, role: Role, field: str, images: int, w: int, h: int) -> None:
        if images > limits.max_images_per_job:
            raise Forbidden(
                f"{field}={images}: role {role.value} may make at most {limits.max_images_per_job} images per job.",
                details={"field": field, "value": images, "limit": limits.max_images_per_job, "role": role.value},
            )
        if w * h > limits.max_pixels:
            raise Forbidden(
                f"{w}x{h} is {w * h / 1048576:.2f} MP; role {role.value} may make images of at most "
                f"{limits.max_megapixels:g} MP (1 MP = 1024x1024).",
                details={"field": "width x height", "value": w * h, "limit": limits.max_pixels, "role": role.value},
            )

    async def check_batch(self, principal: Principal, size: int) -> None:
        """The role's items per batch (``max_batch_items``; not ``batch_size``, which is images per job)."""
        limit = self.limits(principal).max_batch_items
        if limit is not None and size > limit:
            role = principal.role.value
            raise Forbidden(
                f"A batch of {size} items is more than role {role} may send in one batch ({limit} items, "
                f"COMFYFLOW_LIMITS__{role.upper()}__MAX_BATCH_ITEMS); split it into batches of at most {limit}.",
                details={"field": "items", "value": size, "limit": limit, "role": role},
            )

    async def daily_limit(self, principal: Principal) -> tuple[int | None, str]:
        return self.limits(principal).daily_jobs, utc_day()

    def job_fields(self, principal: Principal) -> dict[str, Any]:
        """Fields stored with each job this caller submits: its role, and its artifacts' retention."""
        return {"role": principal.role.value, "retention_s": self.limits(principal).retention_days * 86400}
