"""The blocking client: the asyncio client run on a private event loop in a background thread.

One implementation of the protocol, so both clients behave the same; it also works from code that already runs
an event loop (a notebook, a sync callback inside an async app), which ``asyncio.run`` based wrappers do not.
Example::

    with Client("http://127.0.0.1:8000") as client:
        job = client.generate(prompt="a red fox")
        print(job.result.artifacts[0].url)
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from comfyflow.client.aio import DEFAULT_URL, AsyncClient, ImageLike, Page, RequestLike, Upload
from comfyflow.models import Artifact, Job, JobEvent

T = TypeVar("T")


async def _next(agen: AsyncIterator[T]) -> T:
    return await anext(agen)


async def _aclose(agen: AsyncIterator[Any]) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        await aclose()


class _Portal:
    """An event loop running in a daemon thread; coroutines are handed to it and waited for."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="comfyflow-client", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("A comfyflow Client method was called from inside the client's own loop.")
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("This comfyflow Client is closed.")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller's thread stops the request too
            raise

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    item = self.call(_next(agen))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self.loop.is_closed():
                self.call(_aclose(agen))


def _shutdown(portal: _Portal, client: AsyncClient) -> None:
    if portal.loop.is_closed():
        return
    try:
        portal.call(client.aclose())
    finally:
        portal.loop.call_soon_threadsafe(portal.loop.stop)
        portal.thread.join(timeout=5)
        if not portal.loop.is_running():
            portal.loop.close()


class Client:
    """The blocking client of one comfyflow API; same arguments, methods and errors as ``AsyncClient``.

    Close it with ``close()`` or use it in a ``with`` block.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._async = AsyncClient(url, api_key=api_key, timeout=timeout, headers=headers)
        self.url = self._async.url
        self._portal = _Portal()
        self._finalizer = weakref.finalize(self, _shutdown, self._portal, self._async)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    def submit(self, request: RequestLike = None, /, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        """See ``AsyncClient.submit``."""
        return self._portal.call(self._async.submit(request, idempotency_key=idempotency_key, **fields))

    def get(self, job_id: str) -> Job:
        """See ``AsyncClient.get``."""
        return self._portal.call(self._async.get(job_id))

    def list_page(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> Page:
        """See ``AsyncClient.list_page``."""
        return self._portal.call(self._async.list_page(status=status, limit=limit, cursor=cursor))

    def list(self, *, status: str | None = None, limit: int | None = None, page_size: int = 50) -> Iterator[Job]:
        """See ``AsyncClient.list``: every job of the caller, newest first, fetched page by page."""
        return self._portal.iterate(self._async.list(status=status, limit=limit, page_size=page_size))

    def cancel(self, job_id: str) -> Job:
        """See ``AsyncClient.cancel``."""
        return self._portal.call(self._async.cancel(job_id))

    def retry(self, job_id: str) -> Job:
        """See ``AsyncClient.retry``."""
        return self._portal.call(self._async.retry(job_id))

    def generate(
        self,
        request: RequestLike = None,
        /,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """See ``AsyncClient.generate``."""
        coro = self._async.generate(request, timeout=timeout, idempotency_key=idempotency_key, **fields)
        return self._portal.call(coro)

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """See ``AsyncClient.wait``."""
        return self._portal.call(self._async.wait(job_id, timeout=timeout))

    def events(
        self, job_id: str, *, last_event_id: str | None = None, reconnect: int = 5, idle_timeout: float = 60.0
    ) -> Iterator[JobEvent]:
        """See ``AsyncClient.events``."""
        agen = self._async.events(job_id, last_event_id=last_event_id, reconnect=reconnect, idle_timeout=idle_timeout)
        return self._portal.iterate(agen)

    def upload(self, image: ImageLike, *, content_type: str | None = None, filename: str | None = None) -> Upload:
        """See ``AsyncClient.upload``."""
        return self._portal.call(self._async.upload(image, content_type=content_type, filename=filename))

    def models(self) -> dict[str, Any]:
        """See ``AsyncClient.models``."""
        return self._portal.call(self._async.models())

    def health(self) -> dict[str, Any]:
        """See ``AsyncClient.health``."""
        return self._portal.call(self._async.health())

    def download(self, artifact: Artifact | str) -> bytes:
        """See ``AsyncClient.download``."""
        return self._portal.call(self._async.download(artifact))
