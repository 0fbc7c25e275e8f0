"""schemathesis against /openapi.json of a live server (fake ComfyUI + workers): valid and invalid inputs with a
bounded number of examples; no 5xx, and every response conforms to the document.

The server runs on its own event loop in a thread, since schemathesis drives it with blocking requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from redis import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from comfyflow.api.app import create_app
from comfyflow.api.docs import openapi
from comfyflow.api.policy import OpenPolicy
from comfyflow.settings import Settings
from comfyflow.testing.api_server import serve_app
from comfyflow.testing.fake_comfyui import FakeComfyUI
from tests.conftest import SERVER_REDIS, new_prefix

MAX_EXAMPLES = 100


class ThreadedAPI:
    """The API with workers and a fake ComfyUI, served from a private event loop in a daemon thread."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.prefix = new_prefix("st", shared=True)
        self.base = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="schemathesis-api", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with FakeComfyUI(workdir=self.home / "fake") as fake:
            settings = Settings(
                home=self.home / "home", key_prefix=self.prefix, redis_url=SERVER_REDIS, backends=[fake.url],
                prefect_enabled=False, lease_seconds=2.0, retry_backoff_seconds=0.05, retry_backoff_max_seconds=0.2,
                stall_timeout_seconds=5.0, render_timeout_seconds=30.0, store_timeout_seconds=5.0,
                sync_timeout_seconds=5.0, max_body_bytes=256 * 1024, max_upload_bytes=256 * 1024,
            )  # type: ignore[call-arg]  # fmt: skip
            # auth off (OpenPolicy): the point here is the contract of every operation, not the 401s
            async with serve_app(create_app(settings, run_worker=True, policy=OpenPolicy())) as base:
                self.base = base
                self._ready.set()
                await self._stop.wait()

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or not self.base:
            raise RuntimeError(f"the API did not start: {self._error!r}")
        return self.base

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        redis = Redis.from_url(SERVER_REDIS)
        keys = list(redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            redis.delete(*keys)
        redis.close()


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ThreadedAPI(tmp_path_factory.mktemp("schemathesis"))
    try:
        yield server.start()
    finally:
        server.stop()


# Loaded from the same function that serves /openapi.json (the test below checks they agree): schemathesis'
# lazy fixture loader does not run on pytest 9 (it sets Function._nodeid, which pytest 9 no longer has).
schema = schemathesis.openapi.from_dict(openapi())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES, deterministic=True
)


def test_the_served_document_is_the_one_tested(live_api: str) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{live_api}/openapi.json", timeout=10) as r:
        assert json.loads(r.read()) == json.loads(json.dumps(openapi()))


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case: Any, live_api: str) -> None:
    case.call_and_validate(
        base_url=live_api,
        timeout=30,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
        ],
    )
