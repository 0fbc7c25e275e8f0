"""The output-streaming part of the backend contract: what every ``comfyflow.backends`` plugin's
``open_output`` must do, as tests any implementation reuses (the pattern of ``storage_contract``).

Subclass :class:`OutputStreamContract` as ``Test<Something>`` and give it two fixtures:

- ``backend``: an open :class:`~comfyflow.plugins.protocols.Backend`, closed afterwards;
- ``serve_output``: a function ``(name: str, data: bytes) -> OutputRef`` that makes ``backend`` serve ``data`` as
  an output file called ``name`` (e.g. by writing it into the server's output folder).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest

from comfyflow.errors import BackendUnavailable, OutputTooLarge
from comfyflow.plugins.protocols import Backend, OutputRef

#: The largest chunk a backend may hand out (the worker holds about one at a time).
MAX_CHUNK = 1024 * 1024
ServeOutput = Callable[[str, bytes], OutputRef]


async def read_all(backend: Backend, ref: OutputRef, max_bytes: int) -> tuple[str, str, list[bytes]]:
    """(content type, extension, chunks) of one output."""
    async with backend.open_output(ref, max_bytes=max_bytes) as stream:
        chunks = [chunk async for chunk in stream.chunks]
    return stream.content_type, stream.extension, chunks


@pytest.mark.asyncio
class OutputStreamContract:
    """Tests of ``Backend.open_output`` every backend passes. Subclasses provide ``backend`` and ``serve_output``."""

    async def test_streams_the_exact_bytes_in_bounded_chunks(self, backend: Backend, serve_output: ServeOutput) -> None:
        data = os.urandom(5 * MAX_CHUNK + 12345)
        ref = serve_output("clip_00001_.webm", data)
        content_type, extension, chunks = await read_all(backend, ref, len(data))
        assert hashlib.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(data).hexdigest()
        assert max(len(c) for c in chunks) <= MAX_CHUNK
        assert (content_type, extension) == ("video/webm", "webm")

    async def test_names_image_types(self, backend: Backend, serve_output: ServeOutput) -> None:
        ref = serve_output("still_00001_.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
        content_type, extension, _ = await read_all(backend, ref, 1000)
        assert (content_type, extension) == ("image/png", "png")

    async def test_an_output_over_the_cap_is_refused_without_reading_it_all(
        self, backend: Backend, serve_output: ServeOutput
    ) -> None:
        data = os.urandom(4 * MAX_CHUNK)
        ref = serve_output("big_00001_.webm", data)
        cap = MAX_CHUNK + 7
        received = 0
        with pytest.raises(OutputTooLarge):
            async with backend.open_output(ref, max_bytes=cap) as stream:
                async for chunk in stream.chunks:
                    received += len(chunk)
        assert received <= cap, "chunks past the cap were handed out"

    async def test_an_output_of_exactly_the_cap_is_accepted(self, backend: Backend, serve_output: ServeOutput) -> None:
        data = os.urandom(MAX_CHUNK + 1)
        ref = serve_output("exact_00001_.webm", data)
        assert b"".join((await read_all(backend, ref, len(data)))[2]) == data

    async def test_a_missing_output_is_backend_unavailable(self, backend: Backend, serve_output: ServeOutput) -> None:
        ref = serve_output("there_00001_.png", b"x")
        missing = OutputRef(ref.node_id, ref.kind, "never_written_00001_.png", ref.subfolder, ref.type)
        with pytest.raises(BackendUnavailable):
            await read_all(backend, missing, 1000)
