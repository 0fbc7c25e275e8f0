"""The asyncio client of the comfyflow API (aiohttp). Example::

async with AsyncClient("http://127.0.0.1:8000", api_key=key) as client:
    job = await client.submit(prompt="a red fox", steps=20)
    async for event in client.events(job.job_id):
        print(event.type, event.data)
    job = await client.get(job.job_id)
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from pydantic import BaseModel

from comfyflow.client import sse
from comfyflow.client.batches import BatchMethods
from comfyflow.client.errors import ApiError, JobTimeout, TransportError, error_from_response
from comfyflow.models import Artifact, Job, JobEvent

DEFAULT_URL = "http://127.0.0.1:8000"
#: What ``submit`` and ``generate`` take: a request model, a dict of its fields, or neither (keywords only).
RequestLike = BaseModel | Mapping[str, Any] | None
ImageLike = bytes | str | os.PathLike[str] | IO[bytes]


@dataclass(frozen=True)
class Page:
    """One page of ``GET /api/v1/jobs``: the jobs, newest first, and the cursor of the next page (or None)."""

    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class Upload:
    """A stored input image; pass ``upload_id`` as ``init_image`` of an img2img request."""

    upload_id: str
    content_type: str
    width: int
    height: int
    size: int
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


def request_body(request: RequestLike, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of a job request: the model (or mapping) with ``fields`` laid over it."""
    if isinstance(request, BaseModel):
        body = request.model_dump(mode="json")
    else:
        body = dict(request or {})
    body.update(fields)
    if not body:
        raise ValueError("Give a request: a request model (e.g. Txt2ImgRequest), a dict, or prompt=...")
    return body


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _event(msg: sse.Message) -> JobEvent:
    try:
        data = json.loads(msg.data)
    except ValueError:
        data = {"raw": msg.data}
    # not validated: an event type this client does not know yet still reaches the caller
    data = data if isinstance(data, dict) else {"value": data}
    return JobEvent.model_construct(id=msg.id or "", type=msg.event, data=data)


class AsyncClient(BatchMethods):
    """A client of one comfyflow API. Open one per process and reuse it; close it with ``aclose`` or
    ``async with``.

    Args:
        url: the API's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer <key>``; None when the server runs without auth.
        timeout: seconds one request may take (``generate`` and ``events`` extend it for themselves).
        headers: extra headers for every request.
        session: an aiohttp session to use (not closed by the client); one is made when None.
    Batches: ``submit_batch``, ``get_batch``, ``batch_items``, ``wait_batch``, ``cancel_batch`` (``batches.py``).
    Raises (from every method):
        ApiError subclasses for error answers (with the envelope's code, message, details, request id);
        TransportError when the API cannot be reached.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url {url!r} is not an http(s) URL; expected e.g. {DEFAULT_URL}")
        from comfyflow import __version__

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"User-Agent": f"comfyflow-client/{__version__}", "Accept": "application/json"}
        self.headers.update(headers or {})
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        seconds: float | None = None,
        headers: Mapping[str, str] | None = None,
        accept: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> Any:
        """One request; the decoded JSON answer, or the typed error (except for statuses in ``accept``)."""
        hdrs = {**self.headers, **(headers or {})}
        limit = aiohttp.ClientTimeout(total=seconds or self.timeout)
        try:
            url = self.url + path
            async with self._http().request(method, url, headers=hdrs, timeout=limit, **kwargs) as r:
                body = await r.read()
                if r.status >= 400 and r.status not in accept:
                    raise error_from_response(r.status, body, r.headers)
                return json.loads(body) if body else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(
                f"{method} {url} failed: {type(exc).__name__}: {exc}. Is the API up at {self.url}?",
                details={"url": self.url + path},
            ) from exc

    # --- jobs -----------------------------------------------------------------------------------------------

    async def submit(self, request: RequestLike = None, /, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        """Queue a job (``POST /api/v1/jobs``); returns it as queued. With an ``idempotency_key``, sending the
        same request again returns the same job instead of a new one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        data = await self._call("POST", "/api/v1/jobs", json=request_body(request, fields), headers=headers)
        return Job.model_validate(data)

    async def get(self, job_id: str) -> Job:
        """The job now (``GET /api/v1/jobs/{id}``): status, progress, result with artifact URLs, error."""
        return Job.model_validate(await self._call("GET", f"/api/v1/jobs/{job_id}"))

    async def list_page(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> Page:
        """One page of the caller's jobs, newest first, optionally only those in ``status``."""
        params: dict[str, str] = {"limit": str(limit)}
        if status:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        data = await self._call("GET", "/api/v1/jobs", params=params)
        return Page([Job.model_validate(j) for j in data["items"]], data.get("next_cursor"))

    async def list(
        self, *, status: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> AsyncIterator[Job]:
        """Every job of the caller (or the first ``limit``), newest first, following the cursor."""
        cursor: str | None = None
        seen = 0
        while True:
            size = page_size if limit is None else min(page_size, limit - seen)
            if size <= 0:
                return
            page = await self.list_page(status=status, limit=size, cursor=cursor)
            for job in page.items:
                yield job
                seen += 1
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        """Cancel (``DELETE /api/v1/jobs/{id}``): a queued job never starts, a running one is interrupted.
        Returns the job's real state: ``canceled``, or ``running`` with ``cancel_requested`` while it stops,
        or the state it had already finished in."""
        return Job.model_validate(await self._call("DELETE", f"/api/v1/jobs/{job_id}"))

    async def retry(self, job_id: str) -> Job:
        """Queue a failed or canceled job again as its next attempt. Raises ConflictError for other states."""
        return Job.model_validate(await self._call("POST", f"/api/v1/jobs/{job_id}/retry"))

    async def generate(
        self,
        request: RequestLike = None,
        /,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """Submit and wait for the finished job (``POST /api/v1/generate``), up to ``timeout`` seconds (the
        server's limit when None). Raises GenerationTimeout (with ``job_id``) when it takes longer; the job
        keeps running, so ``wait(exc.job_id)`` picks it up."""
        params = {"timeout": str(max(1, round(timeout)))} if timeout is not None else None
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        data = await self._call(
            "POST", "/api/v1/generate", json=request_body(request, fields), params=params, headers=headers,
            seconds=(timeout or 3600.0) + self.timeout,
        )  # fmt: skip
        return Job.model_validate(data)

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Follow the job's events until it is finished and return it. Raises JobTimeout after ``timeout``."""
        last: str | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    async for event in self.events(job_id, last_event_id=last):
                        last = event.id
                    job = await self.get(job_id)
                    if job.status.terminal:
                        return job
        except TimeoutError:
            raise JobTimeout(job_id, timeout or 0) from None

    async def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        reconnect: int = 5,
        idle_timeout: float = 60.0,
    ) -> AsyncIterator[JobEvent]:
        """The job's events (status, progress, artifact, done) as Server-Sent Events, from the start or after
        ``last_event_id``. Ends when the server closes the stream after ``done``; a dropped connection is
        resumed with ``Last-Event-ID`` (up to ``reconnect`` times in a row), so no event is lost or repeated.

        Raises:
            TransportError when reconnecting fails ``reconnect`` times in a row, or the stream is idle (not
            even a heartbeat) for ``idle_timeout`` seconds.
        """
        path = f"/api/v1/jobs/{job_id}/events"
        failures = 0
        while True:
            headers = {**self.headers, "Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            done = False
            limit = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=idle_timeout)
            try:
                async with self._http().get(self.url + path, headers=headers, timeout=limit) as r:
                    if r.status >= 400:
                        raise error_from_response(r.status, await r.read(), r.headers)
                    async for msg in sse.parse(r.content.iter_any()):
                        failures = 0
                        event = _event(msg)
                        last_event_id = msg.id or last_event_id
                        done = event.type == "done"
                        yield event
                if done:
                    return  # the server ends the stream after ``done`` once the job is finished
            except ApiError:
                raise
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if failures >= reconnect:
                    raise TransportError(
                        f"The event stream of job {job_id} broke {failures + 1} times in a row: "
                        f"{type(exc).__name__}: {exc}",
                        details={"job_id": job_id, "last_event_id": last_event_id},
                    ) from exc
            failures += 1
            await asyncio.sleep(min(0.25 * 2**failures, 5.0))

    # --- inputs, models, artifacts, health ------------------------------------------------------------------

    async def upload(self, image: ImageLike, *, content_type: str | None = None, filename: str | None = None) -> Upload:
        """Store an input image for img2img (``POST /api/v1/uploads``): bytes, a path, or a binary file."""
        if isinstance(image, bytes):
            data = image
        elif isinstance(image, str | os.PathLike):
            path = Path(image)
            data = await asyncio.to_thread(path.read_bytes)
            filename = filename or path.name
        else:
            data = await asyncio.to_thread(image.read)
            filename = filename or Path(getattr(image, "name", "") or "image").name
        guessed = mimetypes.guess_type(filename)[0] if filename else None
        ctype = content_type or (guessed if guessed and guessed.startswith("image/") else _sniff(data))
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename or "image", content_type=ctype)
        body = await self._call("POST", "/api/v1/uploads", data=form, seconds=max(self.timeout, 120.0))
        known = {"upload_id", "content_type", "width", "height", "size", "sha256"}
        return Upload(**{k: body[k] for k in known}, extra={k: v for k, v in body.items() if k not in known})

    async def models(self) -> dict[str, Any]:
        """Checkpoints, samplers and schedulers the backends offer (``GET /api/v1/models``)."""
        return dict(await self._call("GET", "/api/v1/models"))

    async def health(self) -> dict[str, Any]:
        """Every dependency with its status (``GET /health``). Answers when degraded too: check ``status``."""
        return dict(await self._call("GET", "/health", accept=(503,)))

    async def download(self, artifact: Artifact | str) -> bytes:
        """The bytes of an artifact, through its signed link (an Artifact of a job's result, or its URL)."""
        url = artifact if isinstance(artifact, str) else artifact.url
        if not url:
            raise ValueError("This artifact has no URL; read the job again with get() to mint fresh links.")
        if url.startswith("/"):
            url = self.url + url
        limit = aiohttp.ClientTimeout(total=max(self.timeout, 300.0))
        try:
            async with self._http().get(url, timeout=limit) as r:
                body = await r.read()
                if r.status >= 400:
                    raise error_from_response(r.status, body, r.headers)
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
