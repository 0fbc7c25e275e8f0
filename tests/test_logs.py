"""Structured logs: JSON lines with the request and job context bound once; no secret in any line."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from hypothesis import given
from hypothesis import strategies as st

from comfyflow import logs
from comfyflow.models import Role
from comfyflow.testing.webhook_receiver import WebhookReceiver
from tests.api.test_webhooks import hooks, new_secret
from tests.auth.conftest import auth, auth_api, fake, http  # noqa: F401  (fixtures)

TINY = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


def test_redaction_covers_nested_values_and_tracebacks() -> None:
    buf = io.StringIO()
    logs.configure("DEBUG", "json", stream=buf)
    try:
        log = structlog.get_logger("t")
        log.info("call with Bearer abc.def.ghi", headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
                 items=["cf_live_0123456789abcdef"], url="redis://:hunter2hunter2@h:6379/0", api_key="k")  # fmt: skip
        try:
            raise ValueError("Authorization: Bearer zzz-secret-zzz in whsec_QUJDREVGR0hJSktMTU5PUA==")
        except ValueError:
            log.exception("failed")
        import logging

        logging.getLogger("sanic.error").warning("x-api-key: cf_test_abcdefghijklmnop")
    finally:
        logs.reset()
    text = buf.getvalue()
    for secret in ("abc.def.ghi", "dXNlcjpwYXNzd29yZA", "0123456789abcdef", "hunter2", "zzz-secret", "QUJDREVG",
                   "abcdefghijklmnop"):  # fmt: skip
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["level"] for line in lines] == ["info", "error", "warning"]
    assert "Traceback" in lines[1]["exception"] and lines[0]["api_key"] == "[redacted]"
    assert logs.resolve_format("auto", io.StringIO()) == "json"


def _redacted_by_patterns(text: str) -> str:
    for pattern in logs._VALUE_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + logs.REDACTED, text)
    return text


_PIECES = ["Bearer ", "BASIC ", "basic ", "ba\u017fic dXNlcjpwYXNz", "bearer\t", "cf_", "CF_", "whsec_", "http://u:",
           "@h", "?token=", "&sig=", "Authorization:", "api_key=", "cookie ", "abcdefghijkl", "/api/v1/jobs",
           "0123456789abcdef", " ", "\u00e9", "\u0130", "\u212a"]  # fmt: skip


@given(st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=8).map("".join))
def test_redact_text_quick_check_redacts_what_the_patterns_do(text: str) -> None:
    """The substring check that lets clean ASCII text skip the regular expressions changes no outcome."""
    assert logs.redact_text(text) == _redacted_by_patterns(text)


async def _done(http: Any, base: str, job_id: str, headers: dict[str, str]) -> dict[str, Any]:  # noqa: F811
    for _ in range(400):
        async with http.get(f"{base}/api/v1/jobs/{job_id}", headers=headers) as r:
            job = dict(await r.json())
        if job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.03)
    raise AssertionError(job)


async def test_no_secret_in_any_log_line_while_keys_and_tokens_are_used(auth_api, http, fake) -> None:  # noqa: F811
    buf = io.StringIO()
    logs.configure("DEBUG", "json", stream=buf)
    hook_secret = new_secret()
    try:
        async with WebhookReceiver(hook_secret) as rx:
            api = await auth_api(webhooks=hooks(hook_secret))
            key = await api.key(Role.INTERNAL)
            wrong = key[:-6] + "AAAAAA"
            jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJlLW5vdC12YWxpZA"
            hook_token = "tok3n-in-the-webhook-url-0001"
            body = {**TINY, "webhook": f"{rx.url}?token={hook_token}"}
            headers = {**auth(key), "X-Request-ID": "req-logs-1"}
            async with http.post(api.url("/api/v1/jobs"), json=body, headers=headers) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["job_id"]
            job = await _done(http, api.base, job_id, auth(key))
            assert job["status"] == "succeeded"
            art_url = job["result"]["artifacts"][0]["url"]
            async with http.get(art_url) as r:
                assert r.status == 200
            for hdrs in (auth(wrong), auth(jwt), {"X-API-Key": key}, {"Authorization": f"Basic {key}"},
                         {"Cookie": f"session={key}"}, {}):  # fmt: skip
                async with http.get(api.url("/api/v1/jobs"), headers=hdrs) as r:
                    assert r.status == 401
            async with http.get(api.url(f"/api/v1/jobs?token={key}"), headers=auth(key)) as r:
                assert r.status == 200
            async with http.get(api.url("/metrics"), headers=auth(key)) as r:
                assert r.status == 200
            async with http.post(api.url("/api/v1/jobs"), data=f'{{"prompt": "{key}"', headers=auth(key)) as r:
                assert r.status in (400, 415)
            await rx.wait(lambda r: r.delivered("job.succeeded"))
            await asyncio.sleep(0.2)  # the sender logs after the receiver answered
    finally:
        logs.reset()
    text = buf.getvalue()
    sig = parse_qs(urlsplit(art_url).query).get("sig", ["no-sig-in-presigned-url"])[0]
    secrets = {
        "API key": key, "its secret part": key.rsplit("_", 1)[-1], "wrong key": wrong, "JWT": jwt,
        "JWT signature": jwt.rsplit(".", 1)[-1], "webhook URL token": hook_token, "webhook secret": hook_secret,
        "webhook secret bytes": hook_secret.removeprefix("whsec_"), "link signature": sig,
        "basic auth": base64.b64encode(key.encode()).decode()[:20],
    }  # fmt: skip
    for what, secret in secrets.items():
        assert secret not in text, f"{what} leaked into the logs"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = [entry for entry in lines if entry["event"] == "request" and entry.get("request_id") == "req-logs-1"]
    assert access and access[0]["principal"] and access[0]["route"] == "/api/v1/jobs" and access[0]["status"] == 202
    worker = [entry for entry in lines if entry.get("job_id") == job_id and entry["logger"] == "comfyflow.worker"]
    done = [entry for entry in worker if entry["event"] == "job succeeded"]
    assert done and done[0]["request_id"] == "req-logs-1" and done[0]["attempt"] == 1
    assert done[0]["backend"] == fake.url
    assert any(e["event"] == "webhook delivery" for e in lines)
    assert not [e for e in lines if e["level"] in ("warning", "error") and e["logger"].startswith("comfyflow")]
    refused = [entry for entry in lines if entry["event"] == "request" and entry.get("status") == 401]
    assert len(refused) >= 6 and all(entry["request_id"] for entry in refused)
