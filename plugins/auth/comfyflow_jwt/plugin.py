"""JWT bearer tokens, verified with joserfc: signature (only the configured algorithms), exp/nbf/iat with a
leeway, and iss/aud when configured. The principal id is derived from (iss, sub), so it is stable, path-safe and
never collides with another issuer's subjects."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey

from comfyflow.errors import ConfigError, Unauthorized
from comfyflow.models import Principal, Role
from comfyflow.plugins.auth import bearer_token

SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
MAX_TOKEN = 8192
RANK = {Role.FREE: 0, Role.PRO: 1, Role.INTERNAL: 2}
ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


def principal_id(issuer: str | None, subject: str) -> str:
    """The owner id of a token's subject: ``j_`` + 24 hex characters of SHA-256(iss, sub)."""
    return "j_" + hashlib.sha256(f"{issuer or ''}\n{subject}".encode()).hexdigest()[:24]


class JwtAuth:
    """The ``jwt`` auth plugin. Keeps no state in Redis; a token stops working when it expires."""

    scheme = "jwt"

    def __init__(self, settings: Any, *, redis: Any = None, clock: Callable[[], float] = time.time) -> None:
        cfg = settings.jwt
        if (cfg.secret is None) == (cfg.jwks_file is None):
            raise ConfigError(
                "COMFYFLOW_AUTH includes 'jwt', which needs exactly one of COMFYFLOW_JWT__SECRET (HS256, at least "
                "32 bytes) or COMFYFLOW_JWT__JWKS_FILE (a JSON Web Key Set with the issuer's public keys)."
            )
        self.cfg = cfg
        self.clock = clock
        self.algorithms = list(cfg.algorithms) or (["HS256"] if cfg.secret is not None else ASYMMETRIC)
        self._jwks_path: Path | None = cfg.jwks_file
        self._jwks_mtime = 0.0
        self._jwks_checked = 0.0
        self._key: OctKey | KeySet = (
            OctKey.import_key(cfg.secret.get_secret_value()) if cfg.secret is not None else self._load_jwks()
        )
        self._claims = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=cfg.leeway_seconds,
            exp={"essential": True},
            sub={"essential": True},
            **({"iss": {"essential": True, "value": cfg.issuer}} if cfg.issuer else {}),
            **({"aud": {"essential": True, "value": cfg.audience}} if cfg.audience else {}),
        )

    def _load_jwks(self) -> KeySet:
        path = self._jwks_path
        assert path is not None
        try:
            self._jwks_mtime = os.stat(path).st_mtime
            return KeySet.import_key_set(json.loads(Path(path).read_text()))
        except (OSError, ValueError, JoseError) as exc:
            raise ConfigError(
                f"COMFYFLOW_JWT__JWKS_FILE={str(path)!r} cannot be read as a JSON Web Key Set "
                f'({type(exc).__name__}: {exc}); point it at a file like {{"keys": [{{"kty": "RSA", ...}}]}}.'
            ) from None

    def _keys(self) -> OctKey | KeySet:
        """The verification key(s); a JWKS file is re-read when it changes (key rotation without a restart)."""
        if self._jwks_path is not None and self.clock() - self._jwks_checked >= 1.0:
            self._jwks_checked = self.clock()
            try:
                if os.stat(self._jwks_path).st_mtime != self._jwks_mtime:
                    self._key = self._load_jwks()
            except (OSError, ConfigError):
                pass  # keep the last good key set
        return self._key

    def _role(self, claims: dict[str, Any]) -> Role:
        value = claims.get(self.cfg.role_claim)
        values = value if isinstance(value, list) else [value]
        roles = [Role(self.cfg.roles[v]) for v in values if isinstance(v, str) and v in self.cfg.roles]
        if roles:
            return max(roles, key=RANK.__getitem__)
        if self.cfg.default_role is not None:
            return Role(self.cfg.default_role)
        raise Unauthorized(f"JWT claim {self.cfg.role_claim!r} = {value!r} names no configured role")

    async def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        token = bearer_token(headers)
        if token is None or not SHAPE.match(token):
            return None
        if len(token) > MAX_TOKEN:
            raise Unauthorized("JWT too large")
        try:
            decoded = jwt.decode(token, self._keys(), algorithms=self.algorithms)
            self._claims.validate(decoded.claims)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise Unauthorized(f"invalid JWT ({type(exc).__name__})") from None
        claims = decoded.claims
        subject = claims["sub"]
        if not subject:
            raise Unauthorized("JWT without a subject")
        jti = claims.get("jti")
        return Principal(
            id=principal_id(claims.get("iss"), subject),
            role=self._role(claims),
            key_id=jti[:128] if isinstance(jti, str) else None,
            name=str(claims.get("name") or subject)[:100],
        )

    async def aclose(self) -> None:
        return None
