"""Storage keys: relative, slash-separated paths such as ``jobs/{job_id}/0.png``, checked before any I/O."""

from __future__ import annotations

import uuid

from comfyflow.errors import ValidationError

#: Marks the temporary objects that an atomic put writes before its rename; never a valid key part.
TEMP_MARKER = ".cf-tmp-"
MAX_KEY_LENGTH = 1024

_FIX = "Use a relative path of non-empty parts separated by '/', such as 'jobs/<job_id>/0.png'."


def check_key(key: str) -> str:
    """Return ``key`` unchanged when it is a safe object key.

    Raises:
        ValidationError: when it is empty, absolute, has ``..``/``.``/empty parts, backslashes, control
            characters, the temporary-object marker, or more than ``MAX_KEY_LENGTH`` characters.
    """
    problem = _key_problem(key)
    if problem:
        raise ValidationError(f"Storage key {key!r} is not valid: {problem}. {_FIX}", details={"key": key})
    return key


def check_prefix(prefix: str, *, allow_empty: bool) -> str:
    """Normalise a folder prefix (``jobs/abc`` or ``jobs/abc/``) to ``jobs/abc``; ``""`` is the whole store.

    Raises:
        ValidationError: when the prefix is not a valid key (see :func:`check_key`), or empty and not allowed.
    """
    if not isinstance(prefix, str):
        raise ValidationError(
            f"Storage prefix {prefix!r} must be a string. {_FIX}", details={"prefix": prefix}
        )
    stripped = prefix[:-1] if prefix.endswith("/") else prefix
    if stripped == "":
        if allow_empty:
            return ""
        raise ValidationError(
            "Storage prefix '' would name every object; give a folder such as 'jobs/<job_id>'.",
            details={"prefix": prefix},
        )
    problem = _key_problem(stripped)
    if problem:
        raise ValidationError(
            f"Storage prefix {prefix!r} is not valid: {problem}. {_FIX}", details={"prefix": prefix}
        )
    return stripped


def temp_key(key: str) -> str:
    """A unique hidden sibling of ``key`` for write-then-rename (same folder, so the rename is atomic)."""
    folder, _, name = key.rpartition("/")
    temp = f".{name}{TEMP_MARKER}{uuid.uuid4().hex}"
    return f"{folder}/{temp}" if folder else temp


def is_temp(key: str) -> bool:
    """Whether ``key`` names a temporary object of an unfinished (or crashed) put."""
    return TEMP_MARKER in key.rpartition("/")[2]


def _key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"expected a string, got {type(key).__name__}"
    if not key:
        return "it is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"it has {len(key)} characters, more than {MAX_KEY_LENGTH}"
    if key.startswith("/"):
        return "it is absolute (starts with '/')"
    if "\\" in key:
        return "it contains a backslash"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "it contains a control character"
    for part in key.split("/"):
        if part == "":
            return "it has an empty part ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"it has a {part!r} part"
        if TEMP_MARKER in part:
            return f"it contains {TEMP_MARKER!r}, reserved for temporary objects"
    return None
