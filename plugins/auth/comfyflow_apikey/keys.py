"""The key format: ``cf_live_<key id>_<secret><checksum>``.

- ``cf_live_`` makes a key recognisable to people and to leaked-secret scanners (``KEY_PATTERN``).
- The key id (12 base62 characters) finds the key's record; it is not secret and is shown in listings.
- The secret (32 base62 characters, ~190 bits) is never stored: the record keeps the SHA-256 of the whole key.
- The checksum (CRC32 of everything before it, 6 base62 characters, as GitHub's tokens do) rejects typos and
  truncations without a Redis lookup, and lets scanners drop random look-alikes.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import zlib
from dataclasses import dataclass

PREFIX = "cf_live_"
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_ID_LENGTH = 12
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6
#: What a leaked-secret scanner looks for.
KEY_PATTERN = re.compile(
    rf"\b{PREFIX}([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})\b"
)
_EXACT = re.compile(rf"^{KEY_PATTERN.pattern[2:-2]}$")


def _base62(number: int, width: int) -> str:
    out = []
    while number:
        number, digit = divmod(number, 62)
        out.append(ALPHABET[digit])
    return "".join(reversed(out)).rjust(width, "0")


def checksum(body: str) -> str:
    """The checksum of ``cf_live_<key id>_<secret>``."""
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    digest: str  # SHA-256 hex of the whole key, as stored

    @property
    def display_prefix(self) -> str:
        return f"{PREFIX}{self.key_id}"


def new_key() -> tuple[str, ParsedKey]:
    """A fresh random key and its parsed form."""
    body = f"{PREFIX}{_random(KEY_ID_LENGTH)}_{_random(SECRET_LENGTH)}"
    key = body + checksum(body)
    parsed = parse_key(key)
    assert parsed is not None
    return key, parsed


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_ours(token: str) -> bool:
    """Whether a bearer token claims to be a comfyflow API key (so this plugin, not another, must judge it)."""
    return token.startswith("cf_")


def parse_key(token: str) -> ParsedKey | None:
    """The key id and digest of a well-formed key with a correct checksum; None otherwise (no lookup needed)."""
    m = _EXACT.match(token)
    if m is None:
        return None
    body = token[:-CHECKSUM_LENGTH]
    if not secrets.compare_digest(checksum(body), m.group(3)):
        return None
    return ParsedKey(key_id=m.group(1), digest=digest(token))
