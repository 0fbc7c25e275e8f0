"""A short-lived, per-process cache of authenticated principals, keyed by the ``Authorization`` header.

Authenticating an API key costs a Redis round trip (the key's record and its user's); a client polling a job or
submitting in a burst sends the same credential many times a second. A principal is reused for ``ttl`` seconds
(1 s by default), so a revocation, a disabled user or a role change made through another process takes effect
within that time; made through this process's admin API it takes effect at once (``clear``). Only successes are
cached: a refused credential is checked again every time. Keys are SHA-256 digests of the header, so the cache
never holds a credential.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from comfyflow.models import Principal

DEFAULT_TTL_SECONDS = 1.0
MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(
        self, ttl: float = DEFAULT_TTL_SECONDS, *, max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    @staticmethod
    def _key(credential: str) -> bytes:
        return hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()

    def get(self, credential: str) -> Principal | None:
        """The principal cached for this credential, if it was authenticated less than ``ttl`` seconds ago."""
        if self.ttl <= 0:
            return None
        key = self._key(credential)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, credential: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        key = self._key(credential)
        self._entries[key] = (self.clock() + self.ttl, principal)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every principal (after a key or user changed through this process)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Recently:
    """What was last written to Redis per key, for ``ttl`` seconds: skip writing the same value again."""

    def __init__(self, ttl: float, *, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, object]] = {}

    def fresh(self, key: str, value: object) -> bool:
        """Whether ``value`` was written for ``key`` less than ``ttl`` seconds ago."""
        entry = self._entries.get(key)
        return entry is not None and entry[1] == value and self.clock() < entry[0]

    def put(self, key: str, value: object) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (self.clock() + self.ttl, value)

    def clear(self) -> None:
        self._entries.clear()
