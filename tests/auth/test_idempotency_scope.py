"""The Idempotency-Key is scoped to the API key (as the OpenAPI document says): the same key replays, another
key of the same user makes a new job or batch."""

from __future__ import annotations

from typing import Any

import aiohttp

from comfyflow.api.docs import openapi
from comfyflow.models import Role
from tests.auth.conftest import TINY, auth


async def _post(http: aiohttp.ClientSession, url: str, body: Any, key: str, idem: str) -> tuple[dict, bool]:
    async with http.post(url, json=body, headers={**auth(key), "Idempotency-Key": idem}) as r:
        assert r.status == 202, await r.text()
        return await r.json(), r.headers.get("Idempotent-Replayed") == "true"


async def test_two_keys_of_one_user_do_not_replay_each_others_requests(auth_api: Any, http: aiohttp.ClientSession) -> None:  # noqa: E501
    api = await auth_api(run_worker=False)
    first, second = await api.key(Role.PRO, "carol"), await api.key(Role.PRO, "carol")  # one user, two keys
    jobs = api.url("/api/v1/jobs")
    a, replayed = await _post(http, jobs, TINY, first, "order-17")
    assert not replayed
    again, replayed = await _post(http, jobs, TINY, first, "order-17")
    assert replayed and again["job_id"] == a["job_id"]
    b, replayed = await _post(http, jobs, TINY, second, "order-17")
    assert not replayed and b["job_id"] != a["job_id"], "another key of the same user replayed the request"
    # both jobs are the user's: either key sees both
    async with http.get(jobs, headers=auth(first)) as r:
        assert {j["job_id"] for j in (await r.json())["items"]} == {a["job_id"], b["job_id"]}
    # batches follow the same rule
    batches = api.url("/api/v1/batches")
    x, _ = await _post(http, batches, {"items": [TINY]}, first, "sweep-1")
    y, replayed = await _post(http, batches, {"items": [TINY]}, second, "sweep-1")
    assert not replayed and x["batch_id"] != y["batch_id"]


def test_the_api_document_says_the_scope() -> None:
    doc = openapi()
    for path in ("/api/v1/jobs", "/api/v1/generate", "/api/v1/batches"):
        header = next(p for p in doc["paths"][path]["post"]["parameters"] if p["name"] == "Idempotency-Key")
        assert "scoped to the credential" in header["description"] and "API key" in header["description"]
