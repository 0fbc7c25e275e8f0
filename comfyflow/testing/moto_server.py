"""moto's S3 on a loopback port, for tests: start, make a bucket, stop, and start again on the same port.

``moto.server.ThreadedMotoServer`` is close, but its ``stop()`` keeps the listening socket open (a restart
on the same port fails) and leaves keep-alive connections served, so clients never notice the "outage". This
helper runs the same moto WSGI app on werkzeug's threaded server and, on ``stop()``, closes the listening
socket *and* every open connection: clients see refused connections until ``start()`` binds the same port
again. The objects survive a restart (moto keeps them in process memory), as they would on a real S3 outage.

It also refuses expired presigned URLs (403 ``AccessDenied``, "Request has expired", like AWS), which moto
does not check, so the storage contract can test URL expiry against it.

moto's state is process-global: a test that uses ``moto.mock_aws`` in the same process resets it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import ThreadedWSGIServer

_EXPIRED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
)


@dataclass(frozen=True)
class S3Endpoint:
    """Where the fake S3 listens and how to sign requests to it."""

    endpoint_url: str
    bucket: str
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-east-1"

    def storage_options(self, **overrides: Any) -> dict[str, Any]:
        """s3fs options (``FsspecStorage(options=...)``) for this endpoint; ``overrides`` win."""
        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"region_name": self.region},
        }
        options.update(overrides)
        return options


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server, remembering its open connections so stop() can cut them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client


def _presign_expiry(query: dict[str, list[str]]) -> datetime | None:
    """When a presigned URL stops being valid: SigV4 ``X-Amz-Date + X-Amz-Expires``, SigV2 ``Expires``."""
    if "X-Amz-Expires" in query and "X-Amz-Date" in query:
        signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return signed_at + timedelta(seconds=int(query["X-Amz-Expires"][0]))
    if "Expires" in query and "Signature" in query:
        return datetime.fromtimestamp(int(query["Expires"][0]), UTC)
    return None


def _late(server: Any, app: Any) -> Any:
    """WSGI middleware: answer ``server.delay`` seconds late (each request in its own thread)."""

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        if server.delay > 0:
            time.sleep(server.delay)
        return app(environ, start_response)

    return serve


def _one_at_a_time(app: Any) -> Any:
    """WSGI middleware: serve one request at a time, body included.

    moto keeps an object's bytes in a spooled file that an overwrite closes; a GET or PUT of the same key
    racing with it fails with "I/O operation on closed file" (HTTP 500). S3 itself serves concurrent writes of
    one key (the last one wins), which is what the storage contract checks.
    """
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        with lock:
            body = app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                if hasattr(body, "close"):
                    body.close()

    return serve


def _refuse_expired(app: Any) -> Any:
    """WSGI middleware: 403 for a presigned URL past its expiry, as AWS answers."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        expires_at = _presign_expiry(parse_qs(environ.get("QUERY_STRING", "")))
        if expires_at is not None and datetime.now(UTC) > expires_at:
            headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(_EXPIRED)))]
            start_response("403 Forbidden", headers)
            return [_EXPIRED]
        return app(environ, start_response)

    return guarded


class MotoS3Server:
    """moto's S3 served on ``host`` (loopback) at a free port, with one bucket.

    Args:
        bucket: the bucket created on first start.
        host: the address to bind; keep it on loopback.
        port: 0 picks a free port on first start; later starts reuse it.
    """

    def __init__(self, *, bucket: str = "comfyflow-test", host: str = "127.0.0.1", port: int = 0) -> None:
        self.bucket = bucket
        self.host = host
        self.port = port
        #: Seconds every answer is late (a slow S3), settable while it runs.
        self.delay = 0.0
        self._app = _late(self, _refuse_expired(_one_at_a_time(DomainDispatcherApplication(create_backend_app))))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bucket_made = False

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint(self) -> S3Endpoint:
        """Endpoint URL, bucket and credentials. Raises RuntimeError before the first start."""
        if not self.port:
            raise RuntimeError("MotoS3Server has no port yet: call start() first")
        return S3Endpoint(endpoint_url=f"http://{self.host}:{self.port}", bucket=self.bucket)

    def start(self) -> S3Endpoint:
        """Bind the port (the same one as before after a stop), serve, and make the bucket once.

        Raises:
            RuntimeError: when already running.
            OSError: when the port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError(f"MotoS3Server already running on port {self.port}")
        server = _Server(self.host, self.port, self._app, _QuietHandler)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"moto-s3-{self.port}", daemon=True
        )  # a short poll interval makes stop() (an "outage") take effect in ~50 ms
        self._thread.start()
        if not self._bucket_made:
            self._make_bucket()
        return self.endpoint

    def stop(self) -> None:
        """Stop serving, release the port, and cut open connections. No-op when stopped."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _make_bucket(self) -> None:
        import boto3  # moto depends on it; imported late because it is slow to import

        endpoint = self.endpoint
        client = boto3.client(
            "s3",
            endpoint_url=endpoint.endpoint_url,
            aws_access_key_id=endpoint.key,
            aws_secret_access_key=endpoint.secret,
            region_name=endpoint.region,
        )
        try:
            client.create_bucket(Bucket=self.bucket)
        finally:
            client.close()
        self._bucket_made = True

    def __enter__(self) -> MotoS3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def moto_s3_server(bucket: str = "comfyflow-test") -> Iterator[MotoS3Server]:
    """Run a :class:`MotoS3Server` for the duration of the block (a session fixture's body)."""
    with MotoS3Server(bucket=bucket) as server:
        yield server


@contextmanager
def moto_s3_process(bucket: str = "comfyflow-test") -> Iterator[S3Endpoint]:
    """A :class:`MotoS3Server` in a child process (its memory and threads apart from the caller's, e.g. for
    memory measurements), stopped when the block ends."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom comfyflow.testing.moto_server import MotoS3Server\n"
        f"server = MotoS3Server(bucket={bucket!r})\nserver.start()\nprint(server.port, flush=True)\n"
        "sys.stdin.read()\nserver.stop()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"moto did not start in its child process (printed {line!r})")
        yield S3Endpoint(endpoint_url=f"http://127.0.0.1:{int(line)}", bucket=bucket)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the child stops its server and exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
