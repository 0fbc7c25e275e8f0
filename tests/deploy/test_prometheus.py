"""A real Prometheus scrapes a running comfyflow (auth on, bearer token) while jobs run and fail; the recording
rules and every dashboard query answer with non-empty values equal to what really happened.

Why the values can be exact: job counters and histograms are emitted at 0 before their first increment (so
``rate()`` loses nothing), and every HTTP series the measured phase touches already exists, with as many
requests as the measured phase makes, before Prometheus's first scrape (so every series is extrapolated alike
and ratios are exact). The API process runs no worker; the worker is another runtime, as on another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from typing import Any

from comfyflow import metrics as m
from comfyflow.core.runtime import Runtime
from comfyflow.models import Role
from comfyflow.testing.prometheus import finite, prometheus_server, query, targets_up
from comfyflow.testing.webhook_receiver import WebhookReceiver
from tests.api.test_webhooks import hooks, new_secret
from tests.auth.conftest import auth, auth_api, fake, http  # noqa: F401  (fixtures)
from tests.core.conftest import running_worker
from tests.deploy.test_rules import RULES, dashboard_queries

RATE = "sum(comfyflow:jobs_finished:rate5m"
TINY = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}
INVERT = {  # a raw graph; fake.faults.fail_node_types makes its ImageInvert node fail (a system failure)
    "workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
}


def histogram_quantile(q: float, bounds: list[float], counts: list[float]) -> float:
    """Prometheus's histogram_quantile over cumulative ``counts`` for ``bounds`` (+Inf last)."""
    total = counts[-1]
    rank = q * total
    for i, (bound, cum) in enumerate(zip(bounds, counts, strict=True)):
        if cum >= rank:
            if math.isinf(bound):
                return bounds[i - 1]
            lower, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
            return lower + (bound - lower) * (rank - below) / (cum - below)
    raise AssertionError("unreachable")


def quantile_of(values: list[float], q: float) -> float:
    bounds = [*map(float, m.DURATION_BUCKETS), math.inf]
    return histogram_quantile(q, bounds, [float(sum(1 for v in values if v <= b)) for b in bounds])


class Traffic:
    """The API requests of one phase, counted by (route, method, status)."""

    def __init__(self, http: Any, base: str, headers: dict[str, str]) -> None:  # noqa: F811
        self.http, self.base, self.headers = http, base, headers
        self.counts: Counter[tuple[str, str, int]] = Counter()

    async def call(self, method: str, path: str, route: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, headers=self.headers, **kw) as r:
            self.counts[(route, method, r.status)] += 1
            return r.status, await r.json(content_type=None)

    async def phase(self, receiver_url: str) -> list[str]:
        """Every kind of request the test makes; returns the ids of the jobs it queued."""
        jobs = []
        bodies = [
            {**TINY, "priority": "high"}, {**TINY, "priority": "low"}, {**TINY, "width": 1536, "height": 1536},
            {**TINY, "webhook": receiver_url}, {**TINY, "model": "nope.safetensors"}, INVERT,
        ]  # fmt: skip
        for body in bodies:
            status, job = await self.call("POST", "/api/v1/jobs", "/api/v1/jobs", json=body)
            assert status == 202, job
            jobs.append(job["job_id"])
        status, err = await self.call("POST", "/api/v1/jobs", "/api/v1/jobs", json={**TINY, "width": 4096})
        assert status == 422, err
        status, err = await self.call("GET", f"/api/v1/jobs/{'0' * 32}", "/api/v1/jobs/<job_id:str>")
        assert status == 404, err
        status, err = await self.call("POST", "/api/v1/generate?timeout=1", "/api/v1/generate", json=TINY)
        assert status == 504, err  # no worker runs yet: the job waits, the request times out
        jobs.append(err["error"]["details"]["job_id"])
        for job_id in jobs:
            status, _ = await self.call("GET", f"/api/v1/jobs/{job_id}", "/api/v1/jobs/<job_id:str>")
            assert status == 200
        return jobs


async def _until(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(AssertionError, IndexError, KeyError):
            last = await check()
            if last is not None and last is not False:
                return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: never true (last {last!r})")


async def test_prometheus_reads_rules_and_dashboard_from_a_live_fleet(auth_api, http, fake, tmp_path) -> None:  # noqa: F811
    fake.render_time = 0.05
    fake.faults.fail_node_types = {"ImageInvert"}
    secret = new_secret()
    api = await auth_api(run_worker=False, metrics_flush_seconds=0.2, webhooks=hooks(secret))
    key = await api.key(Role.INTERNAL)
    async with WebhookReceiver(secret) as rx:
        warmup = Traffic(http, api.base, auth(key))
        warm_jobs = await warmup.phase(rx.url)
        async with prometheus_server(tmp_path / "prom", [api.base], rule_files=[RULES], bearer_token=key) as prom:

            async def value(expr: str) -> float:
                res = await query(http, prom, expr)
                assert len(res) == 1, (expr, res)
                return res[0][1]

            await _until("first scrape and rules", lambda: _equals(value, "comfyflow:queue_depth:sum", 7))
            (target,) = await targets_up(http, prom)
            assert target["health"] == "up" and target["lastError"] == ""

            measured = Traffic(http, api.base, auth(key))
            jobs = warm_jobs + await measured.phase(rx.url)
            assert measured.counts == warmup.counts  # each measured series was there before, as large
            for prio, n in {"high": 2, "normal": 10, "low": 2}.items():
                depth = f'comfyflow_queue_depth{{priority="{prio}"}}'
                await _until(depth, lambda d=depth, n=n: _equals(value, d, n))
            await _until("the recorded depth", lambda: _equals(value, "comfyflow:queue_depth:sum", 14))

            rt = await Runtime.open(api.settings, api.settings.redis_url.get_secret_value())  # type: ignore[union-attr]
            try:
                async with running_worker(rt):
                    finals = {}
                    for job_id in jobs:
                        for _ in range(400):
                            job = await rt.store.get(job_id)
                            if job is not None and job.status.terminal:
                                finals[job_id] = job
                                break
                            await asyncio.sleep(0.05)
                    await rx.wait(lambda r: len(r.delivered("job.succeeded")) == 2)
                    succeeded = [j for j in finals.values() if j.status.value == "succeeded"]
                    codes = Counter(j.error.code for j in finals.values() if j.error)
                    assert len(succeeded) == 10 and codes == {"INVALID_GRAPH": 2, "EXECUTION_ERROR": 2}, codes
                    await _until(
                        "every finish scraped",
                        lambda: _equals(value, "sum(comfyflow_jobs_finished_total)", 14),
                    )
                    await _until("the webhooks scraped", lambda: _equals(
                        value, 'sum(comfyflow_webhook_deliveries_total{outcome="delivered"})', 10))  # fmt: skip
                    await _check_rules(value, http, prom, succeeded, measured)
                    await _check_dashboard(http, prom)
            finally:
                await rt.aclose()


async def _equals(value: Any, expr: str, want: float, tol: float = 1e-9) -> bool:
    got = await value(expr)
    return abs(got - want) <= tol * max(1.0, abs(want))


async def _check_rules(value: Any, http: Any, prom: str, ok: list[Any], measured: Traffic) -> None:  # noqa: F811
    small = [j.durations.total for j in ok if j.request["width"] * j.request["height"] <= m.TWO_MP]
    assert len(small) == 8
    # rules are evaluated every second; wait for them to have seen the last scrape, then compare exactly
    expected = {
        "comfyflow:job_failures:ratio_30m": 2 / (10 + 2),  # user errors (INVALID_GRAPH) left out
        "comfyflow:http_requests:success_ratio_5m": 1 - sum(
            n for (_route, _method, status), n in measured.counts.items() if status >= 500
        ) / sum(measured.counts.values()),
        "comfyflow:job_latency_seconds:p95_5m": quantile_of(small, 0.95),
        "comfyflow:job_latency_seconds:p99_5m": quantile_of(small, 0.99),
        'comfyflow:job_phase_seconds:p95_5m{phase="render"}': quantile_of([j.durations.render for j in ok], 0.95),
        'comfyflow:job_phase_seconds:p95_5m{phase="total"}': quantile_of([j.durations.total for j in ok], 0.95),
        f"{RATE}{{state='succeeded'}}) / {RATE}{{state='failed'}})": 10 / 4,
        "comfyflow:queue_depth:sum": 0,
    }  # fmt: skip
    assert abs(expected["comfyflow:http_requests:success_ratio_5m"] - 15 / 16) < 1e-12
    for expr, want in expected.items():
        await _until(f"{expr} == {want}", lambda e=expr, w=want: _equals(value, e, w, tol=1e-6), timeout=10)
    # first progress: no ground truth per attempt, but the rule must agree with the buckets it reads. Every
    # succeeded attempt saw a first event; an attempt failing at once may fail before its first event is read.
    bounds = [*map(float, m.FIRST_PROGRESS_BUCKETS), math.inf]

    async def agrees() -> bool:
        res = {float(lab["le"]): v for lab, v in await query(http, prom, "comfyflow_job_first_progress_seconds_bucket")}
        counts = [res[b] for b in bounds]
        assert 10 <= counts[-1] <= 12, counts
        p95 = await value("comfyflow:job_first_progress_seconds:p95_5m")
        return abs(p95 - histogram_quantile(0.95, bounds, counts)) < 1e-6 and 0 < p95 < 2

    await _until("first progress p95 agrees with its buckets", agrees, timeout=10)
    util = await query(http, prom, "comfyflow:backend_utilization:ratio_5m")
    assert len(util) == 1 and 0 < util[0][1] <= 1.05


async def _check_dashboard(http: Any, prom: str) -> None:  # noqa: F811
    for title, expr in dashboard_queries():
        res = await query(http, prom, expr)
        assert res, f"panel {title!r}: {expr} is empty"
        assert any(finite(v) for _, v in res), f"panel {title!r}: {expr} has no finite value: {res}"
