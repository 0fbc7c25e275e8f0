"""Raw ComfyUI graphs: INTERNAL only (403 otherwise), node classes on the allow-list and no paths in inputs
(422), all checked before anything reaches ComfyUI. And the per-role image limits of typed requests."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from comfyflow.models import Role, Txt2ImgRequest
from comfyflow.plugins.comfyui.templates import txt2img
from tests.auth.conftest import TINY, auth

FAST = {"free": {"requests_per_minute": 10_000}, "pro": {"requests_per_minute": 10_000}}


def graph() -> dict[str, Any]:
    request = Txt2ImgRequest(prompt="a fox", width=64, height=64, steps=2)
    return dict(txt2img(request, model="sd15-fake.safetensors", seed=1, filename_prefix="t"))


async def _post(http: aiohttp.ClientSession, api: Any, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(api.url("/api/v1/jobs"), json=body, headers=auth(key)) as r:
        return r.status, await r.json()


async def test_free_and_pro_raw_graphs_get_403(auth_api: Any, http: aiohttp.ClientSession, fake: Any) -> None:
    api = await auth_api(limits=FAST)
    for role in (Role.FREE, Role.PRO):
        status, body = await _post(http, api, await api.key(role), {"workflow": graph()})
        assert status == 403 and body["error"]["code"] == "FORBIDDEN", body
    await asyncio.sleep(0.3)
    assert fake.prompts_posted == {}


async def test_internal_graph_with_a_disallowed_class_gets_422_before_comfyui(
    auth_api: Any, http: aiohttp.ClientSession, fake: Any
) -> None:
    api = await auth_api()
    key = await api.key(Role.INTERNAL)
    bad = graph()
    bad["99"] = {"class_type": "ExecutePythonCode", "inputs": {"code": "import os"}}
    status, body = await _post(http, api, key, {"workflow": bad})
    assert status == 422, body
    assert body["error"]["code"] == "VALIDATION_ERROR" and "ExecutePythonCode" in body["error"]["message"]
    detail = body["error"]["details"][0]
    assert (detail["field"], detail["value"]) == ("workflow.99.class_type", "ExecutePythonCode")
    async with http.get(api.url("/api/v1/jobs"), headers=auth(key)) as r:
        assert (await r.json())["items"] == []  # no job was made
    await asyncio.sleep(0.3)
    assert fake.prompts_posted == {}
    status, body = await _post(http, api, key, {"workflow": graph()})  # the same graph without it runs
    assert status == 202, body


async def test_paths_in_graph_inputs_are_refused(auth_api: Any, http: aiohttp.ClientSession, fake: Any) -> None:
    api = await auth_api(run_worker=False)
    key = await api.key(Role.INTERNAL)
    loader = next(nid for nid, node in graph().items() if node["class_type"] == "CheckpointLoaderSimple")
    for value in ("../../models/x.safetensors", "/etc/passwd", "C:\\Windows\\x.ckpt", "~/.ssh/id_rsa",
                  "a/../../b.safetensors", "..\\up.ckpt"):  # fmt: skip
        g = graph()
        g[loader]["inputs"]["ckpt_name"] = value
        status, body = await _post(http, api, key, {"workflow": g})
        assert status == 422, (value, body)
    g = graph()
    g[loader]["inputs"]["extra"] = {"nested": ["ok", "../secret"]}
    status, body = await _post(http, api, key, {"workflow": g})
    assert status == 422 and body["error"]["details"][0]["field"].endswith("extra.nested.1"), body
    assert fake.prompts_posted == {}


async def test_typed_requests_within_the_role_limits(auth_api: Any, http: aiohttp.ClientSession) -> None:
    api = await auth_api(run_worker=False, limits=FAST)
    free, pro = await api.key(Role.FREE), await api.key(Role.PRO)
    cases = [
        (free, {**TINY, "batch_size": 2}, 403),  # FREE: one image per job
        (pro, {**TINY, "batch_size": 4}, 202),
        (pro, {**TINY, "batch_size": 5}, 403),
        (free, {**TINY, "width": 1024, "height": 1024}, 202),  # 1 MP
        (free, {**TINY, "width": 1024, "height": 1032}, 403),
        (pro, {**TINY, "width": 1536, "height": 1536}, 202),  # 2.25 MP
    ]
    for key, body, expected in cases:
        status, answer = await _post(http, api, key, body)
        assert status == expected, (body, answer)
        if status == 403:
            assert answer["error"]["details"]["limit"]
