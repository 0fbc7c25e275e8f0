"""Pipeline tests reuse the core fixtures (fake ComfyUI on a real port, runtimes on an isolated prefix) and the
live API fixtures."""

from __future__ import annotations

from tests.api.conftest import api_factory, http  # noqa: F401 (shared fixtures)
from tests.core.conftest import fake, runtime_factory  # noqa: F401 (shared fixtures)
