"""The web console in headless Chromium: sign in, submit, watch progress reach the end (resuming a dropped event
stream), see the image, cancel a running job, watch a sweep's contact sheet fill in; errors, CSP, keyboard, phone
width."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.request
from typing import Any

from PIL import Image, ImageChops, ImageStat
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from comfyflow.testing.browser import LiveConsole

#: Cuts the first event stream the page opens after its first event, as a dropped connection would, and records
#: the Last-Event-ID of every event-stream request.
DROP_FIRST_STREAM = """
window.__streams = [];
const realFetch = window.fetch;
window.fetch = async (url, opts) => {
  const r = await realFetch(url, opts);
  if (!String(url).endsWith("/events")) return r;
  window.__streams.push((opts && opts.headers && opts.headers["Last-Event-ID"]) || null);
  if (window.__streams.length > 1) return r;
  const reader = r.body.getReader();
  let seen = "";
  const cut = new ReadableStream({ async pull(ctrl) {
    const { value, done } = await reader.read();
    if (done) { ctrl.close(); return; }
    ctrl.enqueue(value);
    seen += new TextDecoder().decode(value);
    if (/\\nevent: progress\\n/.test(seen)) { reader.cancel(); ctrl.close(); }
  } });
  return new Response(cut, { status: r.status, headers: r.headers });
};
"""


def until(driver: Any, condition: Any, timeout: float = 30, what: str = "condition") -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=f"{what} never happened")


def css(driver: Any, selector: str) -> Any:
    return until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, selector), what=selector)[0]


def click(driver: Any, selector: str) -> None:
    """Click an enabled element; the job page redraws as events arrive, so find it again if it went stale."""

    def clicked(d: Any) -> bool:
        try:
            element = d.find_element(By.CSS_SELECTOR, selector)
            if not element.is_enabled():
                return False
            element.click()
            return True
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    until(driver, clicked, what=f"click on {selector}")


def sign_in(driver: Any, key: str) -> None:
    field = css(driver, "#key")
    assert driver.switch_to.active_element == field  # focused (a failed try leaves it selected): type, Enter
    field.send_keys(key + Keys.ENTER)
    css(driver, "#jobs")


def go(driver: Any, hash_: str) -> None:
    driver.execute_script("location.hash = arguments[0]", hash_)


def job_status(driver: Any) -> str:
    return str(driver.execute_script("const s = document.querySelector('#job .status'); return s && s.dataset.status"))


def api(live: LiveConsole, path: str, key: str | None = None, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key or live.key}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{live.base}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_sign_in_submit_watch_progress_to_the_end_and_see_the_image(browser: Any, live: LiveConsole) -> None:
    live.fake.render_time = 2.0
    sign_in(browser, live.key)
    assert browser.execute_script("return sessionStorage.getItem('comfyflow.key')") == live.key
    assert browser.execute_script("return localStorage.length") == 0 and live.key not in browser.current_url
    browser.execute_script(DROP_FIRST_STREAM)
    go(browser, "#/new")
    css(browser, "#new-job textarea[name=prompt]").send_keys("a red fox in the snow")
    steps = css(browser, "#new-job input[name=steps]")
    steps.clear()
    steps.send_keys("10")
    css(browser, "#new-job button[type=submit]").click()
    css(browser, "#job")
    seen: list[float] = []
    deadline = time.monotonic() + 60
    while (status := job_status(browser)) != "succeeded":
        assert time.monotonic() < deadline and status in ("None", "queued", "running"), status
        value = browser.execute_script("const p = document.querySelector('#job progress'); return p && p.value")
        if value is not None and (not seen or seen[-1] != value):
            seen.append(float(value))
        time.sleep(0.03)
    assert any(0 < v < 1 for v in seen), f"no progress shown while running: {seen}"
    assert seen == sorted(seen)  # never goes back
    assert float(browser.execute_script("return document.querySelector('#job progress').value")) == 1.0
    streams = browser.execute_script("return window.__streams")
    assert streams[0] is None and len(streams) >= 2 and re.fullmatch(r"\d+-\d+", streams[1]), streams  # resumed
    loaded = "const i = document.querySelector('img[data-test=artifact]'); return i && i.complete && i.naturalWidth"
    assert until(browser, lambda d: d.execute_script(loaded), what="the image loaded") == 512
    job_id = browser.current_url.rsplit("/", 1)[1]
    _, _, body = api(live, f"/api/v1/jobs/{job_id}")
    job = json.loads(body)
    assert css(browser, "#seed").text == str(job["result"]["seed"])
    image_src, download = browser.execute_script(
        "return [document.querySelector('img[data-test=artifact]').src,"
        " document.querySelector('figure a[download]').href]"
    )
    assert image_src == download and image_src.startswith(f"{live.base}/api/v1/artifacts/")
    go(browser, "#/jobs")
    css(browser, f"tr[data-job='{job_id}'] .status[data-status=succeeded]")


def test_img2img_with_an_upload(browser: Any, live: LiveConsole, tmp_path: Any) -> None:
    live.fake.render_time = 0.3
    source = tmp_path / "input.png"
    Image.new("RGB", (96, 64), (20, 120, 200)).save(source)
    sign_in(browser, live.key)
    go(browser, "#/new")
    css(browser, "#new-job input[name=kind][value=img2img]").click()
    css(browser, "#img2img input[name=image]").send_keys(str(source))
    css(browser, "#new-job textarea[name=prompt]").send_keys("the same, at night")
    css(browser, "#new-job button[type=submit]").click()
    css(browser, "#job")
    until(browser, lambda d: job_status(d) == "succeeded", what="img2img succeeded")
    loaded = "const i = document.querySelector('img[data-test=artifact]'); return i && i.complete && i.naturalWidth"
    assert until(browser, lambda d: d.execute_script(loaded), what="the image loaded") == 512  # scaled to the form
    job = json.loads(api(live, f"/api/v1/jobs/{browser.current_url.rsplit('/', 1)[1]}")[2])
    assert job["request"]["kind"] == "img2img" and job["request"]["denoise"] == 0.75
    assert re.fullmatch(r"[0-9a-f]{32}", job["request"]["init_image"])


def test_cancel_a_running_job_then_retry_it(browser: Any, live: LiveConsole) -> None:
    live.fake.render_time = 60.0
    try:
        sign_in(browser, live.key)
        go(browser, "#/new")
        css(browser, "#new-job textarea[name=prompt]").send_keys("a slow fox")
        css(browser, "#new-job button[type=submit]").click()
        css(browser, "#job")
        until(browser, lambda d: job_status(d) == "running", what="running")
        assert browser.execute_script("return document.querySelector('#retry').disabled")
        click(browser, "#cancel")
        until(browser, lambda d: job_status(d) == "canceled", what="canceled")
        assert browser.execute_script("return document.querySelector('#cancel').disabled")
        click(browser, "#retry")
        until(browser, lambda d: job_status(d) in ("queued", "running"), what="queued again")
        until(browser, lambda d: job_status(d) == "running", what="running again")
        click(browser, "#cancel")
        until(browser, lambda d: job_status(d) == "canceled", what="canceled again")
        job_id = browser.current_url.rsplit("/", 1)[1]
        assert json.loads(api(live, f"/api/v1/jobs/{job_id}")[2])["attempt"] == 2
    finally:
        live.fake.render_time = 0.5


def test_a_sweeps_contact_sheet_fills_in(browser: Any, live: LiveConsole) -> None:
    live.fake.render_time = 0.8
    sign_in(browser, live.key)
    go(browser, "#/sweep")
    css(browser, "#new-sweep textarea[name=prompts]").send_keys("a red fox\na grey cat")
    for name, value in (("seeds", "1, 2, 3"), ("cfgs", "5, 7"), ("stepss", "4"), ("width", "128"), ("height", "128")):
        field = css(browser, f"#new-sweep input[name={name}]")
        field.clear()
        field.send_keys(value)
    css(browser, "#new-sweep button[type=submit]").click()
    sheet = css(browser, "#sheet")
    etags: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        etag = sheet.get_attribute("data-etag")
        if etag and (not etags or etags[-1] != etag):
            etags.append(etag)
        done = browser.execute_script("return document.querySelector('#main .status').dataset.status")
        if done == "succeeded" and etags and browser.execute_script("return arguments[0].complete", sheet):
            break
        assert time.monotonic() < deadline, (done, etags)
        time.sleep(0.05)
    time.sleep(0.2)  # the last sheet request after the batch finished
    until(browser, lambda d: sheet.get_attribute("data-etag") != etags[0], what="the sheet changed")
    batch_id = browser.current_url.rsplit("/", 1)[1]
    query = sheet.get_attribute("data-query")
    assert re.fullmatch(r"\?x=seed&y=prompt&z=cfg_scale&z_index=0&cell=\d+", query), query
    status, headers, data = api(live, f"/api/v1/batches/{batch_id}/grid{query}")
    assert status == 200
    until(browser, lambda d: sheet.get_attribute("data-etag") == headers["ETag"], what="the final sheet shown")
    shown = browser.execute_script(  # the pixels the page shows, read back through a canvas
        "const img = arguments[0], c = document.createElement('canvas');"
        "c.width = img.naturalWidth; c.height = img.naturalHeight; c.getContext('2d').drawImage(img, 0, 0);"
        "return c.toDataURL('image/png').split(',')[1];",
        sheet,
    )
    page_sheet = Image.open(io.BytesIO(base64.b64decode(shown))).convert("RGB")
    api_sheet = Image.open(io.BytesIO(data)).convert("RGB")
    assert page_sheet.size == api_sheet.size
    assert max(ImageStat.Stat(ImageChops.difference(page_sheet, api_sheet)).mean) < 1.0  # the finished sheet
    assert len(set(etags)) >= 2, etags  # it was shown while it filled in, then again when done
    assert "12" in css(browser, "#counts").text
    Select(css(browser, "#axes select[name=z_index]")).select_by_index(1)  # the sheet of the second cfg_scale
    until(browser, lambda d: "z_index=1" in (sheet.get_attribute("data-query") or ""), what="the other z sheet")
    status, headers, _ = api(live, f"/api/v1/batches/{batch_id}/grid{sheet.get_attribute('data-query')}")
    assert status == 200 and sheet.get_attribute("data-etag") == headers["ETag"] != etags[-1]


def test_errors_csp_keyboard_and_phone_width(browser: Any, live: LiveConsole) -> None:
    css(browser, "#key").send_keys("cf_live_not_a_key" + Keys.ENTER)
    alert = css(browser, "#alert")
    until(browser, lambda d: alert.is_displayed(), what="the error shown")
    _, _, body = api(live, "/api/v1/me", key="cf_live_not_a_key")
    assert json.loads(body)["error"]["message"] in alert.text and "UNAUTHORIZED" in alert.text
    assert browser.execute_script("return sessionStorage.getItem('comfyflow.key')") is None
    assert not css(browser, "#nav").is_displayed()
    status, headers, page = api(live, "/ui/", key="")
    csp = headers["Content-Security-Policy"]
    assert status == 200 and "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    scripts = re.findall(rb"<script[^>]*>", page)
    assert scripts and all(b" src=" in s for s in scripts) and not re.search(rb"\son[a-z]+=", page)  # none inline
    sign_in(browser, live.key)
    browser.refresh()  # still signed in (this tab's session storage); focus starts at the top of the page
    css(browser, "#jobs")
    keyboard = ActionChains(browser)
    for _ in range(8):  # Tab through the skip link to the "New job" link, open it with Enter
        keyboard.send_keys(Keys.TAB).perform()
        if browser.switch_to.active_element.text == "New job":
            break
    assert browser.switch_to.active_element.text == "New job"
    keyboard.send_keys(Keys.ENTER).perform()
    css(browser, "#new-job")
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)  # (a headless window is >= 500 wide)
    try:
        assert browser.execute_script("return window.innerWidth") == 390
        sweep = {"base": {"prompt": "fox", "width": 64, "height": 64, "steps": 1}, "sweep": {"seed": [1, 2, 3, 4]}}
        batch = json.loads(api(live, "/api/v1/batches", body=sweep)[2])["batch_id"]
        pages = (("#/new", "#new-job"), ("#/jobs", "#jobs"), ("#/sweep", "#new-sweep"),
                 (f"#/batches/{batch}", "#sheet"))  # fmt: skip
        for hash_, selector in pages:
            go(browser, hash_)
            css(browser, selector)
            overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, (hash_, overflow)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    violations = [e for e in browser.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert not violations, violations
