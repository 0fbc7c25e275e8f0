"""Bad input never gives a 500: every refusal is the error envelope, names the offending field, and carries
X-Request-ID (echoed when well-formed, replaced when hostile or too long)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.api.helpers import error_of, fields_of, get_job, submit, tiny, wait_for

JSON = {"Content-Type": "application/json"}


def deep(levels: int) -> bytes:
    return ("[" * levels + "]" * levels).encode()


async def test_malformed_bodies_are_400_or_422(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    cases: list[tuple[bytes, int, str | None]] = [
        (b"{bad", 400, None),
        (b'{"prompt": "a"', 400, None),
        (b"", 400, None),
        (b"   \n", 400, None),
        (b'{"prompt": "a", "cfg_scale": NaN}', 400, None),
        (b'{"prompt": "a", "cfg_scale": Infinity}', 400, None),
        (b'{"prompt": "a", "cfg_scale": -Infinity}', 400, None),
        (b'{"prompt": "a", "cfg_scale": 1e400}', 400, None),
        (b'{"workflow": {"1": {"class_type": "KSampler", "inputs": {"denoise": -1e999}}}}', 400, None),
        (b'{"prompt": "a", "steps": 1' + b"0" * 5000 + b"}", 400, None),
        (deep(100_000), 400, None),
        (deep(33), 400, None),
        (b'{"prompt": "caf\xe9"}', 400, None),
        (b'{"prompt": "\xff\xfe"}', 400, None),
        (b"null", 422, "body"),
        (b"[]", 422, "body"),
        (b"42", 422, "body"),
        (b'"a prompt"', 422, "body"),
    ]
    for body, status, field in cases:
        for path in ("/api/v1/jobs", "/api/v1/generate"):
            async with http.post(f"{base}{path}", data=body, headers=JSON) as r:
                err = await error_of(r, status, "BAD_REQUEST" if status == 400 else "VALIDATION_ERROR")
                if field:
                    assert fields_of(err) == {field}, (body[:60], err)
    async with http.get(f"{base}/api/v1/jobs") as r:
        assert (await r.json())["items"] == [], "nothing was queued"


async def test_wrong_content_types_are_415(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    body = json.dumps(tiny()).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/xml", "application/json-seq", None):  # fmt: skip
        headers = {"Content-Type": ctype} if ctype else {}
        async with http.post(f"{base}/api/v1/jobs", data=body, headers=headers) as r:
            err = await error_of(r, 415, "UNSUPPORTED_MEDIA_TYPE")
            assert "application/json" in err["message"]
    for ctype in ("application/json; charset=utf-8", "Application/JSON"):
        async with http.post(f"{base}/api/v1/jobs", data=body, headers={"Content-Type": ctype}) as r:
            assert r.status == 202, await r.text()


async def test_oversize_bodies_are_413(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, max_body_bytes=64 * 1024, max_upload_bytes=64 * 1024)
    padded = json.dumps({**tiny(), "negative_prompt": "x" * 100_000}).encode()
    async with http.post(f"{base}/api/v1/jobs", data=padded, headers=JSON) as r:
        await error_of(r, 413, "PAYLOAD_TOO_LARGE")
    async with http.post(f"{base}/api/v1/jobs", data=b"x" * (3 * 1024 * 1024), headers=JSON) as r:
        await error_of(r, 413, "PAYLOAD_TOO_LARGE")

    # a huge Content-Length is refused from the headers alone: the answer comes without sending the body
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: big-1\r\nContent-Length: 1073741824\r\n\r\n{"
    )
    await writer.drain()
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    writer.close()
    assert head.startswith("HTTP/1.1 413"), head
    assert re.search(r"(?im)^x-request-id: big-1\r$", head), head


async def test_hostile_and_huge_prompts(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    refused: list[tuple[dict[str, Any], str]] = [
        (tiny(prompt="a\x00b"), "prompt"),
        (tiny(negative_prompt="\x00"), "negative_prompt"),
        (tiny(prompt="x" * 100_000), "prompt"),
        (tiny(prompt="ü" * 5001), "prompt"),
        (tiny(prompt=""), "prompt"),
        (tiny(prompt=None), "prompt"),
        (tiny(prompt=["a"]), "prompt"),
        (tiny(labels=["x" * 101]), "labels.0"),
        (tiny(labels=["a"] * 21), "labels"),
    ]
    for body, field in refused:
        async with http.post(f"{base}/api/v1/jobs", json=body) as r:
            err = await error_of(r, 422, "VALIDATION_ERROR")
            assert field in fields_of(err), err
            assert len(json.dumps(err)) < 4000, "the offending value is not echoed back whole"
    # a lone surrogate cannot be encoded as UTF-8 anywhere downstream: refused
    async with http.post(f"{base}/api/v1/jobs", data=b'{"prompt": "\\ud800 x"}', headers=JSON) as r:
        assert fields_of(await error_of(r, 422, "VALIDATION_ERROR")) == {"prompt"}

    accepted = [
        "\u202e\u202dreversed\u202c \u2066isolate\u2069",  # bidi overrides
        "zero\u200bwidth\ufeff joiner\u200d",
        "e\u0301\u0301\u0301 combining",
        "😀" * 1000 + "👩‍👩‍👧‍👦",
        "<script>alert(1)</script> '; DROP TABLE jobs; -- {{7*7}} ${jndi:ldap://x}",
        "\x1b[31mred\x1b[0m \r\n\t tabs",
        "ü" * 5000,
    ]
    for prompt in accepted:
        job = await submit(http, base, tiny(prompt=prompt, negative_prompt=prompt, labels=[prompt[:100]]))
        again = await get_job(http, base, job["job_id"])
        assert again["request"]["prompt"] == prompt and again["request"]["negative_prompt"] == prompt


async def test_out_of_range_parameters(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        (tiny(width=4096, height=4096), {"width", "height"}),
        (tiny(width=2048, height=2056), {"height"}),
        (tiny(width=63), {"width"}),
        (tiny(width=100), {"width"}),
        (tiny(steps=0), {"steps"}),
        (tiny(steps=151), {"steps"}),
        (tiny(steps=2.5), {"steps"}),
        (tiny(cfg_scale=31), {"cfg_scale"}),
        (tiny(seed=2**64), {"seed"}),
        (tiny(seed=-2), {"seed"}),
        (tiny(batch_size=11), {"batch_size"}),
        (tiny(sampler="euler_a"), {"sampler"}),
        (tiny(sampler="k_euler"), {"sampler"}),
        (tiny(scheduler="fast"), {"scheduler"}),
        (tiny(model="../../etc/passwd"), {"model"}),
        (tiny(model="/abs.safetensors"), {"model"}),
        (tiny(priority="urgent"), {"priority"}),
        (tiny(unknown_field=1), {"unknown_field"}),
        (tiny(kind="video"), {"kind"}),
        (tiny(init_image="../../x"), {"init_image"}),
        (tiny(denoise=2), set()),
        ({"workflow": {}}, {"workflow"}),
        ({"workflow": {str(i): {"class_type": "X"} for i in range(1001)}}, {"workflow"}),
        ({"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "../../secret.png"}}}}, {"workflow"}),
        ({"workflow": {"1": {"inputs": {}}}}, {"workflow.1.class_type"}),
    ]
    for body, fields in cases:
        async with http.post(f"{base}/api/v1/jobs", json=body) as r:
            err = await error_of(r, 422, "VALIDATION_ERROR")
            assert fields <= fields_of(err), (body, err)
            first = err["details"][0]
            assert first["message"] and err["message"].startswith(first["field"])
    # the limits themselves are accepted
    async with http.post(f"{base}/api/v1/jobs", json=tiny(width=2048, height=2048, seed=2**64 - 1)) as r:
        assert r.status == 202, await r.text()
    async with http.post(f"{base}/api/v1/jobs", json=tiny(sampler="dpmpp_2m", scheduler="karras")) as r:
        assert r.status == 202, await r.text()


async def test_unknown_sampler_message_names_the_valid_ones(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    async with http.post(f"{base}/api/v1/jobs", json=tiny(sampler="Euler a")) as r:
        err = await error_of(r, 422, "VALIDATION_ERROR")
    assert err["details"][0]["field"] == "sampler" and err["details"][0]["value"] == "Euler a"
    assert "euler_ancestral" in err["message"]


async def test_missing_model_job_fails_with_the_model_list(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    job = await submit(http, base, tiny(model="sdxl-not-here.safetensors"))
    failed = await wait_for(http, base, job["job_id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "INVALID_GRAPH"
    assert all(name in failed["error"]["message"] for name in fake.checkpoints), failed["error"]


async def test_request_ids(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    generated = re.compile(r"^[0-9a-f]{32}$")
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/ping", {}),
        ("GET", "/api/v1/jobs", {}),
        ("GET", "/api/v1/nope", {}),
        ("PUT", "/api/v1/jobs", {}),
        ("GET", f"/api/v1/jobs/{'0' * 32}", {}),
        ("POST", "/api/v1/jobs", {"data": b"{bad", "headers": JSON}),
        ("POST", "/api/v1/jobs", {"data": b"x", "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/api/v1/jobs", {"json": tiny(width=4096)}),
        ("GET", "/health", {}),
        ("GET", "/openapi.json", {}),
        ("HEAD", "/ping", {}),
    ]
    for method, path, kw in requests:
        for given, echoed in (
            ("client-req_1.2:3", True),
            ("x" * 128, True),
            ("x" * 129, False),
            ("has space", False),
            ("<script>", False),
            ("ünïcode", False),
            ("", False),
        ):
            headers = {**kw.get("headers", {}), "X-Request-ID": given}
            async with http.request(method, base + path, **{**kw, "headers": headers}) as r:
                rid = r.headers.get("X-Request-ID")
                assert rid == given if echoed else generated.match(rid or ""), (method, path, given, rid)
                assert r.status < 500 or path == "/health"  # no workers here: degraded
                if r.status >= 400 and method != "HEAD" and path != "/health":
                    assert (await r.json())["error"]["request_id"] == rid
    async with http.get(f"{base}/ping") as r1, http.get(f"{base}/ping") as r2:
        assert r1.headers["X-Request-ID"] != r2.headers["X-Request-ID"]


async def test_routing_errors_use_the_envelope(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    for method, path, status, code in (
        ("GET", "/nowhere", 404, "NOT_FOUND"),
        ("GET", "/api/v2/jobs", 404, "NOT_FOUND"),
        ("PUT", "/api/v1/jobs", 405, "METHOD_NOT_ALLOWED"),
        ("PATCH", f"/api/v1/jobs/{'0' * 32}", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/api/v1/jobs/%00", 404, "NOT_FOUND"),
        ("GET", "/api/v1/jobs/" + "%F0%9F%98%80" * 50, 404, "NOT_FOUND"),
        ("GET", "/api/v1/jobs?limit=-1", 422, "VALIDATION_ERROR"),
        ("GET", "/api/v1/jobs?limit=1e9", 422, "VALIDATION_ERROR"),
        ("GET", "/api/v1/jobs?status=%00", 422, "VALIDATION_ERROR"),
        ("GET", "/api/v1/jobs?cursor=%FF%FE", 422, "VALIDATION_ERROR"),
    ):
        async with http.request(method, base + path) as r:
            await error_of(r, status, code)


async def test_garbage_on_the_socket_never_crashes_the_server(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    parts = urlsplit(base)
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x01b\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(raw)
        await writer.drain()
        try:
            head = await asyncio.wait_for(reader.read(4096), 5)
        except (ConnectionError, TimeoutError):
            head = b""
        writer.close()
        assert not head.startswith(b"HTTP/1.1 5"), (raw[:60], head[:200])
    async with http.get(f"{base}/ping") as r:
        assert r.status == 200
    # aiohttp refuses to send a CR LF in a header value; the server never sees such a request split in two
    try:
        async with http.get(f"{base}/ping", headers={"X-Request-ID": "a\r\nX-Evil: 1"}) as r:
            assert "X-Evil" not in r.headers
    except (ValueError, aiohttp.ClientError):
        pass
