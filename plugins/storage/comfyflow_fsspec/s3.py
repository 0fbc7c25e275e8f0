"""What only S3 (s3fs) needs: option defaults, a signer for the public endpoint, one-request head, close."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

from fsspec.spec import AbstractFileSystem

S3_PROTOCOLS = frozenset({"s3", "s3a"})


def is_s3(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in S3_PROTOCOLS for p in protocols)


#: Bounds of one S3 call (override with ``config_kwargs`` in the storage options).
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
#: botocore's own tries per call (the store step retries on top of it, within its bound).
MAX_ATTEMPTS = 2
#: s3fs' own tries of a call that timed out or failed transiently (its default is 5).
FS_RETRIES = 1
#: Part size of multipart uploads from files (S3's minimum is 5 MiB); files below two parts go in one PUT.
UPLOAD_PART_BYTES = 8 * 1024 * 1024


def prepare_options(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs options with comfyflow's defaults; the caller's values win.

    - ``use_listings_cache=False``: other processes write the same bucket, a cached listing would be stale.
    - ``signature_version="s3v4"``: presigned URLs in SigV4 (botocore presigns SigV2 for custom endpoints).
    - explicit ``connect_timeout`` / ``read_timeout`` (botocore's default read timeout is 60 s): a hung S3 fails
      a call within seconds, and the store step's own retries (bounded by store_timeout_seconds) take over.
    """
    prepared = dict(options)
    prepared.setdefault("use_listings_cache", False)
    config = dict(prepared.get("config_kwargs") or {})
    config.setdefault("signature_version", "s3v4")
    config.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    config.setdefault("read_timeout", READ_TIMEOUT_SECONDS)
    config.setdefault("retries", {"total_max_attempts": MAX_ATTEMPTS})
    prepared["config_kwargs"] = config
    return prepared


def endpoint_of(options: dict[str, Any]) -> str | None:
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    return endpoint.rstrip("/") if endpoint else None


def public_signer(options: dict[str, Any], public_endpoint: str | None) -> AbstractFileSystem | None:
    """A second filesystem, configured for ``public_endpoint``, used only to presign URLs.

    SigV4 signs the host, so a URL made for the internal endpoint cannot be re-pointed at the public one; it
    has to be signed for the public host. Presigning is local (no request), so this client never connects.

    Returns:
        None when no public endpoint is set or it equals the storage's endpoint (the main client signs).
    """
    if not public_endpoint or public_endpoint.rstrip("/") == endpoint_of(options):
        return None
    from s3fs import S3FileSystem

    signer_options = dict(options)
    signer_options["endpoint_url"] = public_endpoint.rstrip("/")
    signer_options["client_kwargs"] = {
        k: v for k, v in (options.get("client_kwargs") or {}).items() if k != "endpoint_url"
    }
    signer_options["skip_instance_cache"] = True
    return S3FileSystem(**signer_options)


async def head(fs: Any, path: str) -> dict[str, Any]:
    """``head_object``: size, content type and user metadata in one request (s3fs ``_info`` drops metadata).

    Raises:
        FileNotFoundError: when the object does not exist (s3fs translates the 404).
    """
    bucket, key, _ = fs.split_path(path)
    return await fs._call_s3("head_object", Bucket=bucket, Key=key)


async def put_file(fs: Any, local: str, path: str, **kwargs: Any) -> None:
    """Upload a local file with s3fs (``put_object`` below two parts, else a multipart upload that S3 shows as
    one object on completion), one ``UPLOAD_PART_BYTES`` part in memory at a time (s3fs' defaults are 50 MiB
    parts, 10 at once). s3fs aborts a failed multipart upload; a cancelled one is aborted here, so neither leaves
    parts behind. ``kwargs`` (ContentType, Metadata) go to the PUT or to the multipart upload.
    """
    try:
        await fs._put_file(local, path, chunksize=UPLOAD_PART_BYTES, max_concurrency=1, **kwargs)
    except asyncio.CancelledError:
        await abort_uploads(fs, path)
        raise


async def abort_uploads(fs: Any, path: str) -> None:
    """Abort the unfinished multipart uploads of exactly ``path`` (best effort). Every attempt writes its own
    keys, so an upload of the same key in progress elsewhere is not expected."""
    bucket, key, _ = fs.split_path(path)
    with suppress(Exception):
        listed = await fs._call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        for upload in listed.get("Uploads", []):
            if upload.get("Key") == key:
                await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload["UploadId"])


async def close(fs: Any) -> None:
    """Close the aiobotocore client on its own loop. s3fs has no public close; its GC finalizer is a no-op
    afterwards."""
    creator, client = getattr(fs, "_s3creator", None), getattr(fs, "_s3", None)
    if creator is not None and client is not None:
        fs._s3 = None
        await creator.__aexit__(None, None, None)
