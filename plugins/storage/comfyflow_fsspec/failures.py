"""Classifying what fsspec, the OS and botocore raise into comfyflow's errors. Nothing is retried here."""

from __future__ import annotations

from comfyflow.errors import ComfyflowError, NotFound, StorageError


def classify(url: str, operation: str, key: str, exc: Exception, *, reading: bool = False) -> ComfyflowError:
    """The comfyflow error for ``exc`` raised by ``operation`` on ``key``.

    Args:
        url: the storage URL, named in the message.
        operation: ``put``, ``get``, ``list``...
        key: the key (or prefix) concerned.
        exc: what the filesystem raised.
        reading: whether a missing file means a missing object (``NotFound``) rather than a failure (a put
            into a missing bucket is a ``StorageError``).
    Returns:
        ``exc`` itself when already a comfyflow error; ``NotFound`` for a missing object when reading;
        otherwise ``StorageError`` (transient, except permission errors, which another attempt cannot fix).
    """
    if isinstance(exc, ComfyflowError):
        return exc
    if reading and isinstance(exc, FileNotFoundError | IsADirectoryError):
        return NotFound(f"No object at key {key!r} in {url}.", details={"key": key})
    error = StorageError(
        f"Storage {operation} of key {key!r} in {url} failed: {type(exc).__name__}: {exc}",
        details={"key": key, "operation": operation, "cause": type(exc).__name__},
    )
    if isinstance(exc, PermissionError):
        error.transient = False  # bad credentials or policy: another attempt fails the same way
    return error
