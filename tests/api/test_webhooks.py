"""Webhooks: signed per Standard Webhooks, retried with backoff, logged per try, replayable, durable."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest

from comfyflow.api.app import create_app
from comfyflow.core.webhooks.targets import GuardedResolver, TargetRefused, check_target
from comfyflow.testing.api_server import serve_app
from comfyflow.testing.metrics import scrape
from comfyflow.testing.webhook_receiver import WebhookReceiver
from tests.api.helpers import error_of, submit, tiny, wait_for

LOOPBACK = ["127.0.0.0/8", "::1/128"]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def hooks(secret: str, **overrides: Any) -> dict[str, Any]:
    return {
        "secret": secret, "allow_networks": LOOPBACK, "backoff_seconds": 0.05, "poll_seconds": 0.05, **overrides,
    }  # fmt: skip


async def deliveries(http: Any, base: str, job_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/jobs/{job_id}/webhooks") as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def test_events_are_signed_retried_logged_and_replayable(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    secret = new_secret()
    fake.render_time = 0.3
    async with WebhookReceiver(secret, fail_first={"job.succeeded": 2}) as rx:
        base = await api_factory(webhooks=hooks(secret), metrics_flush_seconds=0.1)
        job = await submit(http, base, tiny(webhook=rx.url, steps=8, labels=["hooked"]))
        await rx.wait(lambda r: r.delivered("job.succeeded"))
        done = await wait_for(http, base, job["job_id"])

        assert all(r.verified for r in rx.requests), "every request verifies with the shared secret"
        kinds = [r.payload["type"] for r in rx.delivered()]
        assert kinds == ["job.started", "job.progress", "job.progress", "job.progress", "job.succeeded"]
        assert [r.payload["data"]["milestone"] for r in rx.delivered("job.progress")] == [0.25, 0.5, 0.75]
        tries = [r for r in rx.requests if r.payload["type"] == "job.succeeded"]
        assert [r.answered for r in tries] == [500, 500, 200], "fails twice, then succeeds on the third try"
        assert len({r.headers["webhook-id"] for r in tries}) == 1, "one message id across its retries"
        data = tries[-1].payload["data"]
        assert data["job_id"] == job["job_id"] and data["status"] == "succeeded"
        assert data["labels"] == ["hooked"] if "labels" in data else True
        assert [a["sha256"] for a in data["result"]["artifacts"]] == [a["sha256"] for a in done["result"]["artifacts"]]

        log = await deliveries(http, base, job["job_id"])
        assert log["webhook"] == rx.url
        assert [d["event"] for d in log["items"]] == kinds
        final = log["items"][-1]
        assert final["status"] == "delivered" and final["delivery_id"] == tries[0].headers["webhook-id"]
        assert [(a["try"], a["status_code"], a["outcome"]) for a in final["attempts"]] == [
            (1, 500, "retrying"), (2, 500, "retrying"), (3, 200, "delivered"),
        ]  # fmt: skip
        assert final["attempts"][1]["at"] >= final["attempts"][0]["at"] + 0.04, "waited its backoff"

        async with http.post(f"{base}/api/v1/jobs/{job['job_id']}/webhooks/{final['delivery_id']}/replay") as r:
            assert r.status == 202, await r.text()
            assert (await r.json())["status"] == "pending"
        await rx.wait(lambda r: len(r.delivered("job.succeeded")) == 2)
        again = rx.delivered("job.succeeded")[-1]
        assert again.verified and again.headers["webhook-id"] == final["delivery_id"] and again.body == tries[-1].body
        final = (await deliveries(http, base, job["job_id"]))["items"][-1]
        assert final["replays"] == 1 and final["status"] == "delivered"
        assert [(a["trigger"], a["outcome"]) for a in final["attempts"]][-1] == ("replay", "delivered")
        assert len(final["attempts"]) == 4

        s = await scrape(http, base)
        assert s.get1("comfyflow_webhook_deliveries_total", event="job.succeeded", outcome="retrying") == 2
        assert s.get1("comfyflow_webhook_deliveries_total", event="job.succeeded", outcome="delivered") == 2
        assert s.get1("comfyflow_webhook_deliveries_total", event="job.progress", outcome="delivered") == 3
        assert s.get1("comfyflow_webhook_pending_deliveries") == 0

        async with http.post(f"{base}/api/v1/jobs/{job['job_id']}/webhooks/msg_{'0' * 32}/replay") as r:
            await error_of(r, 404, "NOT_FOUND")


async def test_failed_and_canceled_jobs_notify_and_give_up(api_factory, http, fake) -> None:  # type: ignore[no-untyped-def]
    secret = new_secret()
    async with WebhookReceiver(secret, fail_first={"job.canceled": 99}) as rx:
        base = await api_factory(webhooks=hooks(secret, max_attempts=2), worker_concurrency=1)
        fake.faults.fail_node_types = {"KSampler"}
        failed = await submit(http, base, tiny(webhook=rx.url))
        await rx.wait(lambda r: r.delivered("job.failed"))
        body = rx.delivered("job.failed")[0].payload["data"]
        assert body["job_id"] == failed["job_id"] and body["error"]["code"] == "EXECUTION_ERROR"
        assert [r.payload["type"] for r in rx.delivered()] == ["job.started", "job.failed"]

        fake.faults.fail_node_types = set()
        fake.render_time = 30.0
        running = await submit(http, base, tiny(webhook=rx.url))
        await wait_for(http, base, running["job_id"], until=lambda j: j["progress"]["phase"] == "rendering")
        queued = await submit(http, base, tiny(webhook=rx.url))  # waits behind the running one (concurrency 1)
        for job in (queued, running):
            async with http.delete(f"{base}/api/v1/jobs/{job['job_id']}") as r:
                assert r.status == 200, await r.text()
        await rx.wait(lambda r: len([q for q in r.requests if q.payload["type"] == "job.canceled"]) == 4)
        for _ in range(100):  # the sender records the last failure just after the receiver answered
            items = (await deliveries(http, base, queued["job_id"]))["items"]
            if items and items[0]["status"] == "failed":
                break
            await asyncio.sleep(0.05)
    assert [d["event"] for d in items] == ["job.canceled"], "a job canceled while queued never started"
    assert [a["outcome"] for a in items[0]["attempts"]] == ["retrying", "failed"]
    events = [d["event"] for d in (await deliveries(http, base, running["job_id"]))["items"]]
    assert events == ["job.started", "job.canceled"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]/hook", "http://[::ffff:127.0.0.1]/x",
        "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/hook", "http://192.168.0.1/hook",
        "http://0.0.0.0/hook", "ftp://example.com/hook", "http://user:pw@example.com/hook", "not a url",
    ],
)  # fmt: skip
async def test_private_and_bad_targets_are_refused(api_factory, http, url: str) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    async with http.post(f"{base}/api/v1/jobs", json=tiny(webhook=url)) as r:
        err = await error_of(r, 422, "VALIDATION_ERROR")
    assert "webhook" in err["message"]


async def test_allowed_networks_are_exact() -> None:
    await check_target("http://127.0.0.1:9/x", ["127.0.0.0/8"])
    with pytest.raises(TargetRefused):
        await check_target("http://10.0.0.1/x", ["127.0.0.0/8"])
    with pytest.raises(TargetRefused):
        await GuardedResolver([]).resolve("localhost", 80)
    assert await GuardedResolver(LOOPBACK).resolve("localhost", 80)


async def test_deliveries_survive_a_restart(make_settings, server_redis_url, fake, http) -> None:  # type: ignore[no-untyped-def]
    """The receiver is down while the first process runs; a second process, started later, delivers."""
    secret = new_secret()
    async with WebhookReceiver(secret, fail_first={"job.succeeded": 10**6}) as rx:
        settings = make_settings(
            backends=[fake.url], redis_url=server_redis_url, auth="none", webhooks=hooks(secret, backoff_seconds=0.3)
        )
        async with serve_app(create_app(settings, run_worker=True)) as base:
            job = await submit(http, base, tiny(webhook=rx.url))
            await rx.wait(lambda r: any(q.payload["type"] == "job.succeeded" for q in r.requests))
        first_process_tries = len(rx.requests)
        rx.fail_first = {}
        async with serve_app(create_app(settings, run_worker=True)) as base:
            await rx.wait(lambda r: r.delivered("job.succeeded"))
            final = (await deliveries(http, base, job["job_id"]))["items"][-1]
    assert first_process_tries >= 2 and final["status"] == "delivered"
    assert final["attempts"][0]["outcome"] == "retrying" and final["attempts"][-1]["outcome"] == "delivered"
