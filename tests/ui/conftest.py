"""A live API with auth on (in its own thread) and one headless Chromium for the module; a failing test leaves a
screenshot and the browser's console log in a temporary folder, named in the failure report."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyflow.testing.browser import LiveConsole, chromium
from tests.conftest import SERVER_REDIS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        driver = getattr(item, "funcargs", {}).get("browser")
        if driver is not None:
            folder = Path(tempfile.mkdtemp(prefix="comfyflow-ui-failure-"))
            driver.save_screenshot(str(folder / f"{item.name}.png"))
            logs = "\n".join(str(e) for e in driver.get_log("browser"))
            (folder / f"{item.name}.console.txt").write_text(logs)
            report.sections.append(("browser", f"screenshot and console log in {folder}"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    with LiveConsole(tmp_path_factory.mktemp("console"), SERVER_REDIS, render_time=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    drv = chromium(1200, 900)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture
def browser(driver: Any, live: LiveConsole) -> Any:
    """The module's browser, signed out, at the console, with the window at desktop size."""
    driver.set_window_size(1200, 900)
    driver.get(f"{live.base}/ui/")
    driver.execute_script("sessionStorage.clear()")
    driver.get("about:blank")
    driver.get(f"{live.base}/ui/")
    return driver
