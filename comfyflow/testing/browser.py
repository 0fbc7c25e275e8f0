"""The web console in a real browser: Debian's headless Chromium driven by Selenium, and a live API (auth on, with
workers and the fake ComfyUI) served from its own event loop in a thread, since Selenium's calls block.

Used by the browser tests (tests/ui) and by ``scripts/screenshots``. The browser and its driver are the system's
(``scripts/system-deps`` installs ``chromium`` and ``chromium-driver``); both paths are given to Selenium, so
Selenium Manager never runs and nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from comfyflow.models import Role
from comfyflow.settings import Settings

CHROMIUM = Path(os.environ.get("COMFYFLOW_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("COMFYFLOW_CHROMEDRIVER", "/usr/bin/chromedriver"))


def chromium(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium WebDriver on the system's browser and driver.

    Raises:
        RuntimeError: Chromium or its driver is not installed (``./scripts/system-deps`` installs both).
    """
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not found: run ./scripts/system-deps (apt: chromium, "
                           "chromium-driver), or set COMFYFLOW_CHROMIUM / COMFYFLOW_CHROMEDRIVER")  # fmt: skip
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager may not fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Its profile and its temporary files (Chromium leaves a /tmp/org.chromium.Chromium.* folder behind when the
    # driver ends it) in one folder of ours, removed on quit.
    scratch = Path(tempfile.mkdtemp(prefix="comfyflow-chromium-"))
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    service = Service(executable_path=str(CHROMEDRIVER), env={**os.environ, "TMPDIR": str(scratch)})
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    quit_driver = driver.quit

    def quit() -> None:
        try:
            quit_driver()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    driver.quit = quit  # type: ignore[method-assign]
    return driver


class LiveConsole:
    """An API with auth on, workers and a fake ComfyUI, in a thread; ``key`` is a fresh INTERNAL key.

    ``fake.render_time`` may be changed from the test's thread (it is read at each render).
    """

    def __init__(self, home: Path, redis_url: str, *, render_time: float = 0.5, **settings: Any) -> None:
        self.home = home
        self.redis_url = redis_url
        self.render_time = render_time
        self.overrides = settings
        self.prefix = f"ui{uuid.uuid4().hex[:10]}"
        self.base = ""
        self.key = ""
        self.fake: Any = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="console-api", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from comfyflow_apikey import ApiKeyAuth
        from redis.asyncio import Redis

        from comfyflow.api.app import create_app
        from comfyflow.testing.api_server import serve_app
        from comfyflow.testing.fake_comfyui import FakeComfyUI

        self._stop = asyncio.Event()
        async with FakeComfyUI(workdir=self.home / "fake", render_time=self.render_time) as fake:
            self.fake = fake
            values: dict[str, Any] = {
                "home": self.home / "home", "key_prefix": self.prefix, "redis_url": self.redis_url,
                "backends": [fake.url], "prefect_enabled": False, "auth": "apikey", "lease_seconds": 5.0,
                "retry_backoff_seconds": 0.05, "retry_backoff_max_seconds": 0.2, **self.overrides,
            }  # fmt: skip
            settings = Settings(**values)
            redis = Redis.from_url(self.redis_url)
            try:
                keys = ApiKeyAuth(settings, redis=redis)
                user = await keys.create_user("console", Role.INTERNAL)
                self.key = (await keys.create_key(user.id, "console")).key
                async with serve_app(create_app(settings, run_worker=True, worker_concurrency=4)) as base:
                    self.base = base
                    self._ready.set()
                    await self._stop.wait()
            finally:
                found = [k async for k in redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
                if found:
                    await redis.delete(*found)
                await redis.aclose()

    def start(self) -> LiveConsole:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None or not self.base:
            raise RuntimeError(f"the API did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def __enter__(self) -> LiveConsole:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
