"""The web console's files as the API serves them (the browser tests are in tests/ui): shipped in the package,
served with their types and a CSP without inline script; /api/v1/console points at the Prefect UI."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from comfyflow.api.console import FILES


async def test_console_files_are_served_with_a_strict_csp(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    for name, ctype in FILES.items():
        shipped = (resources.files("comfyflow.api") / "static" / name).read_bytes()
        async with http.get(f"{base}/ui/{name}") as r:
            assert r.status == 200 and r.headers["Content-Type"] == ctype
            assert await r.read() == shipped
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe" not in csp and r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["Referrer-Policy"] == "no-referrer"
    async with http.get(f"{base}/ui") as r:
        assert r.status == 200 and b'<script type="module" src="/ui/app.js">' in await r.read()
    for path in ("/ui/secrets.txt", "/ui/%2e%2e%2fopenapi.json"):  # only the known files, never a path
        async with http.get(f"{base}{path}") as r:
            assert r.status in (401, 404), (path, r.status)  # 404 here: this API runs with auth off
    page = (resources.files("comfyflow.api") / "static" / "index.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from a CDN or another host


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_console_learns_where_the_prefect_ui_is(api_factory, http, enabled: bool) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, prefect_enabled=enabled, prefect_api_url="http://127.0.0.1:4999/api")
    async with http.get(f"{base}/api/v1/console") as r:
        body = await r.json()
    assert body["prefect_ui"] == ("http://127.0.0.1:4999" if enabled else None)
