"""Make the README's pictures from the real thing: the web console watching a sweep (headless Chromium) and the
sweep's contact sheet as the API serves it. Run with ``./scripts/screenshots [folder]`` (default docs/images).

Everything runs locally and is thrown away afterwards: an embedded Redis in a temporary home, the fake ComfyUI,
the API with workers. Needs ``./scripts/system-deps`` (chromium, chromium-driver).
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from comfyflow.embedded.redis import ensure_redis, stop_redis
from comfyflow.testing.browser import LiveConsole, chromium

SWEEP = {"name": "fox-sweep", "base": {"width": 256, "height": 256, "steps": 12},
         "sweep": {"seed": [101, 202, 303, 404, 505], "prompt": ["a red fox in the snow", "a grey cat on a roof",
                                                                "a lighthouse at dusk"]}}  # fmt: skip


def call(live: LiveConsole, path: str, body: dict | None = None) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(f"{live.base}{path}", data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {live.key}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        return dict(r.headers), r.read()


def save_png(data: bytes, path: Path) -> None:
    """Re-encode with a palette when it loses nothing visible (the pictures stay small in the repository)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path}: {img.width}x{img.height}, {path.stat().st_size // 1024} KB")


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="comfyflow-screenshots-") as tmp:
        home = Path(tmp)
        redis_url = ensure_redis(home / "redis-home")
        try:
            with LiveConsole(home, redis_url, render_time=1.2, backend_slots=2) as live:
                driver = chromium(1100, 1060)
                try:
                    driver.get(f"{live.base}/ui/")
                    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "key"))
                    driver.find_element(By.ID, "key").send_keys(live.key + Keys.ENTER)
                    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "jobs"))
                    _, body = call(live, "/api/v1/batches", SWEEP)
                    batch_id = json.loads(body)["batch_id"]
                    driver.execute_script("location.hash = arguments[0]", f"#/batches/{batch_id}")
                    # the console while the sweep runs: some cells drawn, the rest placeholders
                    deadline = time.monotonic() + 120
                    while True:
                        batch = json.loads(call(live, f"/api/v1/batches/{batch_id}?limit=0")[1])
                        if batch["counts"]["succeeded"] >= 7:
                            break
                        assert time.monotonic() < deadline, batch
                        time.sleep(0.2)
                    time.sleep(2.0)  # the page's next refresh
                    driver.execute_script("document.activeElement && document.activeElement.blur()")
                    save_png(driver.get_screenshot_as_png(), folder / "console.png")
                    while json.loads(call(live, f"/api/v1/batches/{batch_id}?limit=0")[1])["status"] == "running":
                        assert time.monotonic() < deadline
                        time.sleep(0.3)
                    _, sheet = call(live, f"/api/v1/batches/{batch_id}/grid?cell=128")
                    save_png(sheet, folder / "contact-sheet.png")
                finally:
                    driver.quit()
        finally:
            stop_redis(home / "redis-home")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
