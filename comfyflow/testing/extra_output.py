"""A backend wrapper that adds one more output to every render: how the tests and the memory benchmark make a
real worker fetch a file of any size (served by the fake ComfyUI's ``/view``) without a graph that makes it."""

from __future__ import annotations

from typing import Any

from comfyflow.plugins.protocols import OutputRef


class ExtraOutput:
    """Renders through ``inner``; while ``ref`` is set, the render's result also names that file."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ref: OutputRef | None = None

    async def render(self, *args: Any, **kwargs: Any) -> list[OutputRef]:
        outputs = await self.inner.render(*args, **kwargs)
        return [*outputs, self.ref] if self.ref else outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
