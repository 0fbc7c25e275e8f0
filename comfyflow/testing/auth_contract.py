"""The auth contract: what every ``comfyflow.auth`` plugin must do, as tests any implementation reuses.

Subclass :class:`AuthContract` in a test module as ``Test<Something>`` and give it one fixture, ``auth``, that
yields an :class:`AuthCase`: the plugin, and how to mint (and, if the scheme can, revoke) credentials for it::

    class TestMyAuth(AuthContract):
        @pytest.fixture
        async def auth(self):
            plugin = MyAuth(settings, redis=redis)

            async def issue(role, *, subject="alice", expires_in=None):
                return mint_token(role, subject, expires_in)

            yield AuthCase(plugin, issue)
            await plugin.aclose()

``issue`` returns the bearer credential (what follows ``Authorization: Bearer``). Credentials issued for the same
``subject`` must name the same principal; ``expires_in`` (seconds) makes one that expires. Schemes that can revoke
a credential subclass :class:`RevocableAuthContract` instead and pass ``revoke``. Class attributes:

- ``expiry_wait``: seconds to wait after ``expires_in=1`` until the credential must be refused.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from comfyflow.errors import Unauthorized
from comfyflow.models import Principal, Role
from comfyflow.plugins.auth import AuthPlugin

#: Principal ids name Redis keys and storage folders: short and path-safe.
PRINCIPAL_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
GARBAGE = ["", " ", "x", "a.b.c", "a.b", "cf_", "cf_live_", "cf_live_x_y", "eyJhbGciOiJub25lIn0.e30.",
           "\U0001f642" * 10, "A" * 10000, "Bearer", "null", "..", "../../etc/passwd", "%00",
           "ey.ey.ey.ey.ey"]  # fmt: skip


@dataclass
class AuthCase:
    plugin: AuthPlugin
    #: ``await issue(role, subject="alice", expires_in=None) -> credential``
    issue: Callable[..., Awaitable[str]]
    #: ``await revoke(credential)``, for schemes that can revoke; None otherwise.
    revoke: Callable[[str], Awaitable[None]] | None = None


def bearer(credential: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"authorization": f"{scheme} {credential}"}


def altered(credential: str) -> str:
    """The credential with one character in its middle changed to another of the same class."""
    i = len(credential) // 2
    while not credential[i].isalnum():
        i += 1
    pool = string.ascii_letters + string.digits
    replacement = pool[(pool.index(credential[i]) + 7) % len(pool)]
    return credential[:i] + replacement + credential[i + 1 :]


@pytest.mark.asyncio
class AuthContract:
    """Tests every auth plugin passes. Subclasses provide the ``auth`` fixture."""

    expiry_wait: float = 2.2

    async def _ok(self, auth: AuthCase, credential: str, **headers: Any) -> Principal:
        principal = await auth.plugin.authenticate({**bearer(credential), **headers})
        assert isinstance(principal, Principal), f"a valid credential gave {principal!r}"
        return principal

    async def _refused(self, auth: AuthCase, headers: dict[str, str]) -> None:
        with pytest.raises(Unauthorized):
            await auth.plugin.authenticate(headers)

    async def test_is_an_auth_plugin(self, auth: AuthCase) -> None:
        assert isinstance(auth.plugin, AuthPlugin)
        assert isinstance(auth.plugin.scheme, str) and auth.plugin.scheme

    async def test_no_credentials_is_none(self, auth: AuthCase) -> None:
        assert await auth.plugin.authenticate({}) is None
        assert await auth.plugin.authenticate({"x-api-key": "anything", "cookie": "a=b"}) is None

    async def test_other_schemes_are_none(self, auth: AuthCase) -> None:
        credential = await auth.issue(Role.FREE)
        for scheme in ("Basic", "Digest", "Token"):
            assert await auth.plugin.authenticate(bearer(credential, scheme)) is None
        assert await auth.plugin.authenticate({"authorization": "Basic dXNlcjpwYXNz"}) is None

    @pytest.mark.parametrize("role", list(Role))
    async def test_a_valid_credential_names_its_role(self, auth: AuthCase, role: Role) -> None:
        principal = await self._ok(auth, await auth.issue(role, subject=f"subject-{role.value}"))
        assert principal.role == role
        assert PRINCIPAL_ID.match(principal.id), f"principal id {principal.id!r} is not short and path-safe"

    async def test_the_bearer_scheme_is_case_insensitive(self, auth: AuthCase) -> None:
        credential = await auth.issue(Role.PRO)
        for scheme in ("bearer", "BEARER", "Bearer"):
            principal = await auth.plugin.authenticate(bearer(credential, scheme))
            assert principal is not None and principal.role == Role.PRO

    async def test_one_subject_one_principal(self, auth: AuthCase) -> None:
        a1 = await self._ok(auth, await auth.issue(Role.FREE, subject="alice"))
        a2 = await self._ok(auth, await auth.issue(Role.FREE, subject="alice"))
        b = await self._ok(auth, await auth.issue(Role.FREE, subject="bob"))
        assert a1.id == a2.id
        assert a1.id != b.id

    async def test_an_altered_credential_is_refused(self, auth: AuthCase) -> None:
        credential = await auth.issue(Role.INTERNAL)
        await self._ok(auth, credential)
        await self._refused(auth, bearer(altered(credential)))
        await self._refused(auth, bearer(credential[:-1]))
        await self._refused(auth, bearer(credential + "A"))

    async def test_garbage_is_ignored_or_refused_never_an_error(self, auth: AuthCase) -> None:
        for junk in GARBAGE:
            try:
                result = await auth.plugin.authenticate(bearer(junk))
            except Unauthorized:
                continue
            assert result is None, f"{junk[:40]!r} was accepted as {result!r}"

    async def test_an_expired_credential_is_refused(self, auth: AuthCase) -> None:
        credential = await auth.issue(Role.FREE, expires_in=1)
        await self._ok(auth, credential)
        await asyncio.sleep(self.expiry_wait)
        await self._refused(auth, bearer(credential))

    async def test_concurrent_authentications_agree(self, auth: AuthCase) -> None:
        credential = await auth.issue(Role.PRO, subject="busy")
        results = await asyncio.gather(*(auth.plugin.authenticate(bearer(credential)) for _ in range(50)))
        assert len({(p.id, p.role) for p in results if p is not None}) == 1
        assert all(p is not None for p in results)

    async def test_headers_are_not_changed(self, auth: AuthCase) -> None:
        headers = bearer(await auth.issue(Role.FREE))
        before = dict(headers)
        await auth.plugin.authenticate(headers)
        assert headers == before


class RevocableAuthContract(AuthContract):
    """The contract plus revocation, for schemes that can revoke a credential (``AuthCase.revoke`` given)."""

    async def test_a_revoked_credential_is_refused(self, auth: AuthCase) -> None:
        assert auth.revoke is not None, "RevocableAuthContract needs AuthCase.revoke"
        credential = await auth.issue(Role.PRO)
        other = await auth.issue(Role.PRO)
        await self._ok(auth, credential)
        await auth.revoke(credential)
        await self._refused(auth, bearer(credential))
        await self._ok(auth, other)
