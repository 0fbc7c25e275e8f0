"""Job store transitions against real Redis (the server and the embedded one)."""

from __future__ import annotations

from redis.asyncio import Redis

from comfyflow.core.queue import QueueReader, StrideScheduler
from comfyflow.core.reaper import Reaper
from comfyflow.core.store import JobStore
from comfyflow.models import ErrorInfo, JobResult, JobState, Priority, Txt2ImgRequest


async def _store(redis: Redis, make_settings, **kw) -> JobStore:  # type: ignore[no-untyped-def]
    store = JobStore(redis, make_settings(**kw))
    await store.ensure_groups()
    return store


async def test_stale_worker_cannot_overwrite_newer_attempt(redis: Redis, make_settings) -> None:  # type: ignore[no-untyped-def]
    store = await _store(redis, make_settings)
    reader = QueueReader(redis, store.keys, "w1", store.settings.priority_weights)
    job = (await store.submit(Txt2ImgRequest(prompt="fox"))).job
    assert job is not None
    first = await store.claim(await reader.try_next(), "w1")  # type: ignore[arg-type]
    assert first is not None
    assert (await Reaper(store).run_once(min_idle_ms=0)) == {"queued": 1}
    second = await store.claim(await reader.try_next(), "w1")  # type: ignore[arg-type]
    assert second is not None and second.attempt == 2
    assert await store.heartbeat(first) == "lost"
    assert not await store.complete(first, JobResult(seed=1))
    assert not await store.update(first, progress={"value": 0.5})
    assert await store.complete(second, JobResult(seed=2))
    done = await store.get(job.job_id)
    assert done is not None and done.status == JobState.SUCCEEDED and done.attempt == 2
    assert done.result is not None and done.result.seed == 2
    assert not await store.complete(second, JobResult(seed=3)), "succeeded twice"


async def test_submit_answers_the_hash_it_wrote(redis: Redis, make_settings) -> None:  # type: ignore[no-untyped-def]
    """The submit script no longer reads the new job back: what ``submit`` answers is the hash in Redis."""
    store = await _store(redis, make_settings)
    cases = [(Txt2ImgRequest(prompt="fox \u00e9\U0001f98a", labels=["a"]), None),
             (Txt2ImgRequest(prompt="owl", priority=Priority.HIGH), {"role": "pro", "n": 3})]  # fmt: skip
    for request, extra in cases:
        out = await store.submit(request, owner="u1", extra=extra)
        assert out.outcome == "ok" and out.raw is not None
        assert out.raw == await store.raw(out.raw["id"])
        assert out.raw["msg_stream"] == store.keys.queue(request.priority) and out.raw["msg_id"] == out.detail


async def test_cancel_queued_never_starts(redis: Redis, make_settings) -> None:  # type: ignore[no-untyped-def]
    store = await _store(redis, make_settings)
    reader = QueueReader(redis, store.keys, "w1", store.settings.priority_weights)
    job = (await store.submit(Txt2ImgRequest(prompt="fox"))).job
    assert job is not None
    assert await store.cancel(job.job_id) == "canceled"
    assert await reader.try_next() is None  # the message was removed with the cancel
    assert (await store.get(job.job_id)).status == JobState.CANCELED  # type: ignore[union-attr]
    assert await store.cancel(job.job_id) == "canceled"  # idempotent: answers the real state


async def test_cancel_running_is_a_request_the_worker_confirms(redis: Redis, make_settings) -> None:  # type: ignore[no-untyped-def]
    store = await _store(redis, make_settings)
    reader = QueueReader(redis, store.keys, "w1", store.settings.priority_weights)
    job = (await store.submit(Txt2ImgRequest(prompt="fox"))).job
    assert job is not None
    claim = await store.claim(await reader.try_next(), "w1")  # type: ignore[arg-type]
    assert claim is not None
    assert await store.cancel(job.job_id) == "requested"
    assert await store.heartbeat(claim) == "cancel"
    assert await store.confirm_canceled(claim)
    assert (await store.get(job.job_id)).status == JobState.CANCELED  # type: ignore[union-attr]


async def test_transient_failures_retry_with_delay_then_fail_clearly(redis: Redis, make_settings) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    store = JobStore(redis, make_settings(max_attempts=2), clock=lambda: now[0])
    await store.ensure_groups()
    reader = QueueReader(redis, store.keys, "w1", store.settings.priority_weights)
    job = (await store.submit(Txt2ImgRequest(prompt="fox"))).job
    assert job is not None
    err = ErrorInfo(code="BACKEND_UNAVAILABLE", message="connection refused", transient=True)
    claim = await store.claim(await reader.try_next(), "w1")  # type: ignore[arg-type]
    assert await store.give_up_attempt(claim, err, delay=5) == ("queued", 2)  # type: ignore[arg-type]
    assert await reader.try_next() is None, "the retry must wait out its delay"
    now[0] += 4
    assert await store.promote_due() == 0
    now[0] += 2
    assert await store.promote_due() == 1
    claim = await store.claim(await reader.try_next(), "w1")  # type: ignore[arg-type]
    assert claim is not None and claim.attempt == 2
    final = err.model_copy(update={"message": "connection refused (gave up after 2 attempts)"})
    assert (await store.give_up_attempt(claim, err, delay=5, final=final))[0] == "failed"
    failed = await store.get(job.job_id)
    assert failed is not None and failed.status == JobState.FAILED
    assert failed.error is not None and "gave up after 2 attempts" in failed.error.message
    assert await store.retry(job.job_id) == ("queued", 3)
    assert (await store.get(job.job_id)).max_attempts == 4  # type: ignore[union-attr]


async def test_worker_lost_on_last_attempt_fails_with_clear_error(redis: Redis, make_settings) -> None:  # type: ignore[no-untyped-def]
    store = await _store(redis, make_settings, max_attempts=1)
    reader = QueueReader(redis, store.keys, "w1", store.settings.priority_weights)
    job = (await store.submit(Txt2ImgRequest(prompt="fox"))).job
    assert job is not None
    assert await store.claim(await reader.try_next(), "w1") is not None  # type: ignore[arg-type]
    assert await Reaper(store).run_once(min_idle_ms=0) == {"failed": 1}
    failed = await store.get(job.job_id)
    assert failed is not None and failed.status == JobState.FAILED
    assert failed.error is not None and failed.error.code == "WORKER_LOST"
    assert "last allowed attempt" in failed.error.message


async def test_priorities_high_first_and_low_never_starved(redis: Redis, make_settings) -> None:  # type: ignore[no-untyped-def]
    store = await _store(redis, make_settings)
    reader = QueueReader(redis, store.keys, "w1", store.settings.priority_weights)
    for prio in ("low", "normal", "high"):
        for _ in range(30):
            await store.submit(Txt2ImgRequest(prompt="p", priority=prio))
    order = []
    for _ in range(24):
        msg = await reader.try_next()
        assert msg is not None
        order.append(msg.stream.rsplit(":", 1)[1])
    assert order[0] == "high"
    # weights 8:3:1 over 24 claims -> 16 high, 6 normal, 2 low
    assert (order.count("high"), order.count("normal"), order.count("low")) == (16, 6, 2)
    assert (await reader.depth()) == {"high": 14, "normal": 24, "low": 28}


def test_stride_scheduler_does_not_bank_credit_while_idle() -> None:
    s = StrideScheduler({"high": 8, "normal": 3, "low": 1})
    for _ in range(100):  # only high has work for a long time
        s.charge(Priority.HIGH, [Priority.NORMAL, Priority.LOW][:0])
        s.charge(Priority.HIGH, [])
    s.charge(Priority.HIGH, [Priority.NORMAL, Priority.LOW])
    # low was idle, but it does not now get 100 claims in a row
    picks = []
    for _ in range(12):
        p = s.order()[0]
        picks.append(p)
        s.charge(p, [])
    assert picks.count(Priority.LOW) <= 2
