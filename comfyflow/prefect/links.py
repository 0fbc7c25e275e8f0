"""Where a person looks at a job or a batch: its page in the web console when the API serves one (``/ui``),
else its API resource."""

from __future__ import annotations

import aiohttp

CONSOLE_PATH = "/ui/"
#: Whether the API at a base URL serves the console, as found by this process (asked once per base URL).
_served: dict[str, bool] = {}


async def console_served(base_url: str, *, timeout: float = 3.0) -> bool:
    """True when ``GET <base_url>/ui/`` answers 200 with an HTML page. Asked once per process and base URL;
    an API that cannot be reached counts as not serving it (and is asked again next time)."""
    base = base_url.rstrip("/")
    if base in _served:
        return _served[base]
    try:
        async with aiohttp.ClientSession() as http:
            limit = aiohttp.ClientTimeout(total=timeout)
            async with http.get(base + CONSOLE_PATH, timeout=limit, allow_redirects=True) as r:
                _served[base] = r.status == 200 and r.content_type == "text/html"
    except (aiohttp.ClientError, TimeoutError):
        return False
    return _served[base]


def job_page(base_url: str, job_id: str, *, console: bool) -> str:
    """The console's page of the job (``/ui/#/jobs/<id>``), or the job's API resource."""
    base = base_url.rstrip("/")
    return f"{base}/ui/#/jobs/{job_id}" if console else f"{base}/api/v1/jobs/{job_id}"


def batch_page(base_url: str, batch_id: str, *, console: bool) -> str:
    """The console's page of the batch (``/ui/#/batches/<id>``), or the batch's API resource."""
    base = base_url.rstrip("/")
    return f"{base}/ui/#/batches/{batch_id}" if console else f"{base}/api/v1/batches/{batch_id}"
