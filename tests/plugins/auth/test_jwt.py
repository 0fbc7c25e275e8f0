"""The JWT plugin: the same auth contract as the API-key plugin, plus JWKS, claims and role mapping."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from comfyflow_jwt import JwtAuth, principal_id
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from comfyflow.errors import ConfigError, Unauthorized
from comfyflow.models import Role
from comfyflow.plugins import registry
from comfyflow.testing.auth_contract import AuthCase, AuthContract, bearer

SECRET = "an-hs256-shared-secret-of-40-bytes-long!"


def hs256(claims: dict[str, Any], secret: str = SECRET, **header: Any) -> str:
    return jwt.encode({"alg": "HS256", **header}, claims, OctKey.import_key(secret))


def claims_for(
    role: str | list[str] | None = "pro", sub: str = "alice", ttl: int = 3600, **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl, **extra}
    if role is not None:
        out["role"] = role
    return out


class TestJwtAuth(AuthContract):
    @pytest.fixture
    async def auth(self, make_settings: Any) -> Any:
        plugin = JwtAuth(make_settings(jwt={"secret": SECRET, "leeway_seconds": 0}))

        async def issue(role: Role, *, subject: str = "alice", expires_in: float | None = None) -> str:
            return hs256(claims_for(role.value, subject, int(expires_in or 3600)))

        yield AuthCase(plugin, issue)
        await plugin.aclose()


@pytest.fixture
def jwks(tmp_path: Path) -> tuple[Path, RSAKey]:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(KeySet([key]).as_dict(private=False)))
    return path, key


def rs256(claims: dict[str, Any], key: RSAKey) -> str:
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


def test_the_entry_point_names_the_plugin() -> None:
    assert registry.load("auth", "jwt") is JwtAuth


def test_configuration_errors_say_what_to_set(make_settings: Any, jwks: tuple[Path, RSAKey]) -> None:
    with pytest.raises(ConfigError, match="COMFYFLOW_JWT__SECRET"):
        JwtAuth(make_settings())
    with pytest.raises(ConfigError, match="exactly one"):
        JwtAuth(make_settings(jwt={"secret": SECRET, "jwks_file": jwks[0]}))
    with pytest.raises(ValueError, match="32 bytes"):
        make_settings(jwt={"secret": "short"})
    bad = jwks[0].with_name("bad.json")
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="JWKS_FILE"):
        JwtAuth(make_settings(jwt={"jwks_file": bad}))


async def test_jwks_file_rs256_and_key_rotation(make_settings: Any, jwks: tuple[Path, RSAKey]) -> None:
    path, key = jwks
    now = [time.time()]
    plugin = JwtAuth(make_settings(jwt={"jwks_file": path}), clock=lambda: now[0])
    principal = await plugin.authenticate(bearer(rs256(claims_for("internal"), key)))
    assert principal is not None and principal.role == Role.INTERNAL
    rotated = RSAKey.generate_key(2048, parameters={"kid": "k2"}, private=True)
    path.write_text(json.dumps(KeySet([rotated]).as_dict(private=False)))
    os.utime(path, (now[0] + 5, now[0] + 5))
    now[0] += 2
    assert await plugin.authenticate(bearer(rs256(claims_for(), rotated))) is not None
    with pytest.raises(Unauthorized):  # the old key left the set
        await plugin.authenticate(bearer(rs256(claims_for(), key)))


async def test_algorithm_confusion_and_alg_none_are_refused(make_settings: Any, jwks: tuple[Path, RSAKey]) -> None:
    path, key = jwks
    plugin = JwtAuth(make_settings(jwt={"jwks_file": path}))

    def b64(data: dict[str, Any] | bytes) -> str:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    # HS256 "signed" with the issuer's public key as the secret (joserfc will not even make one: do it by hand)
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims_for('internal'))}"
    mac = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthorized):
        await plugin.authenticate(bearer(f"{signing_input}.{b64(mac)}"))

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims_for('internal'))}."
    with pytest.raises(Unauthorized):
        await plugin.authenticate(bearer(unsigned))
    hs_plugin = JwtAuth(make_settings(jwt={"secret": SECRET}))
    with pytest.raises(Unauthorized):
        await hs_plugin.authenticate(bearer(unsigned))
    with pytest.raises(Unauthorized):
        await hs_plugin.authenticate(bearer(hs256(claims_for(), secret="another-secret-of-at-least-32-bytes!!")))


async def test_claims(make_settings: Any) -> None:
    plugin = JwtAuth(make_settings(jwt={"secret": SECRET, "issuer": "https://idp", "audience": "comfyflow"}))
    good = claims_for("pro", iss="https://idp", aud="comfyflow", jti="t-1", name="Alice")
    principal = await plugin.authenticate(bearer(hs256(good)))
    assert principal is not None
    assert principal.id == principal_id("https://idp", "alice") and principal.key_id == "t-1"
    assert principal.name == "Alice"
    for bad in (
        {**good, "iss": "https://evil"},
        {**good, "aud": "other"},
        {k: v for k, v in good.items() if k != "exp"},
        {k: v for k, v in good.items() if k != "sub"},
        {**good, "nbf": int(time.time()) + 3600},
        {**good, "exp": int(time.time()) - 3600},
    ):
        with pytest.raises(Unauthorized):
            await plugin.authenticate(bearer(hs256(bad)))


async def test_role_mapping(make_settings: Any) -> None:
    plugin = JwtAuth(make_settings(jwt={"secret": SECRET, "role_claim": "groups",
                                        "roles": {"artists": "pro", "ops": "internal", "guests": "free"}}))  # fmt: skip

    async def role_of(groups: Any) -> Role:
        principal = await plugin.authenticate(bearer(hs256(claims_for(None, groups=groups))))
        assert principal is not None
        return principal.role

    assert await role_of("artists") == Role.PRO
    assert await role_of(["guests", "ops", "artists"]) == Role.INTERNAL  # the highest mapped role
    with pytest.raises(Unauthorized):
        await role_of(["strangers"])
    with pytest.raises(Unauthorized):
        await role_of(None)
    lenient = JwtAuth(make_settings(jwt={"secret": SECRET, "default_role": "free"}))
    principal = await lenient.authenticate(bearer(hs256(claims_for(None))))
    assert principal is not None and principal.role == Role.FREE


async def test_principal_ids_are_scoped_by_issuer() -> None:
    assert principal_id("https://a", "alice") != principal_id("https://b", "alice")
    assert principal_id(None, "../../etc").startswith("j_")
