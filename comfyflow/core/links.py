"""Signed, expiring download links for artifacts the API serves itself (local and memory storage).

S3 storage hands out presigned URLs instead; either way a job's links are minted when it is read, never
frozen at completion.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from comfyflow.errors import Forbidden
from comfyflow.plugins.protocols import Storage
from comfyflow.settings import Settings

ARTIFACT_ROUTE = "/api/v1/artifacts/"


def signing_key(settings: Settings) -> bytes:
    """The configured key, or one generated once and kept (0600) under the home folder."""
    if settings.signing_key is not None:
        return settings.signing_key.get_secret_value().encode()
    path = settings.resolved_home / "keys" / "signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        os.replace(tmp, path) if not path.exists() else tmp.unlink()
    return Path(path).read_text().strip().encode()


class Links:
    def __init__(self, settings: Settings, storage: Storage, *, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.key = signing_key(settings)
        self.storage = storage
        self.clock = clock

    def _sig(self, key: str, expires: int) -> str:
        return hmac.new(self.key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()[:40]

    def local_url(self, base: str, key: str, ttl: int) -> str:
        expires = int(self.clock()) + ttl
        query = urlencode({"expires": expires, "sig": self._sig(key, expires)})
        return f"{base.rstrip('/')}{ARTIFACT_ROUTE}{quote(key)}?{query}"

    async def url(self, base: str, key: str, ttl: int) -> str:
        """A fresh link to ``key`` valid for ``ttl`` seconds."""
        direct = await self.storage.signed_url(key, expires_in=ttl)
        return direct or self.local_url(base, key, ttl)

    def verify(self, key: str, expires: str | None, sig: str | None) -> None:
        """Raises Forbidden for a bad or expired signature."""
        try:
            exp = int(expires or "")
        except ValueError:
            raise Forbidden("This link is not valid; ask the API for a fresh one.") from None
        if not sig or not hmac.compare_digest(self._sig(key, exp), sig):
            raise Forbidden("This link is not valid; ask the API for a fresh one.")
        if exp < self.clock():
            raise Forbidden("This link has expired; read the job again for a fresh link.")

