"""Running fsspec calls from any event loop without blocking it.

An async filesystem (s3fs) opened with ``asynchronous=False`` keeps its aiobotocore client on fsspec's own
IO loop, in a daemon thread. Its coroutine methods (``_cat_file``, ``_pipe_file``...) are scheduled on that
loop and awaited from the caller's loop through a future, so one filesystem object serves every loop of the
process (the API's, the worker's, a Prefect task's) and never touches a closed or foreign loop. Sync
filesystems (local, memory) run in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from fsspec.spec import AbstractFileSystem


async def call(fs: AbstractFileSystem, method: str, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fs.<method>(*args, **kwargs)`` without blocking the running loop.

    Args:
        fs: the filesystem.
        method: the public (sync) method name; an async filesystem's ``_<method>`` coroutine is used instead.
    Returns:
        What the method returns.
    """
    if fs.async_impl:
        return await on_fs_loop(fs, getattr(fs, f"_{method}")(*args, **kwargs))
    return await asyncio.to_thread(getattr(fs, method), *args, **kwargs)


async def on_fs_loop(fs: AbstractFileSystem, coro: Coroutine[Any, Any, Any]) -> Any:
    """Await ``coro`` on the async filesystem's own loop; cancelling the caller cancels it there too."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, fs.loop))
