"""The job state machine, driven by hypothesis against a real Redis server.

Rules submit, claim, heartbeat, crash, reap, complete, fail (permanent and transient), cancel, retry and
promote run in any order, with several workers. Invariants: no job is lost (every queued job sits on a queue
or in the delayed set; every running job's message is pending), no illegal state, attempts never go back,
and no job succeeds twice.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from redis.asyncio import Redis

from comfyflow.core.keys import GROUP, PRIORITIES
from comfyflow.core.queue import QueueReader
from comfyflow.core.reaper import Reaper
from comfyflow.core.store import Claim, JobStore
from comfyflow.models import ErrorInfo, JobResult, JobState, Txt2ImgRequest
from comfyflow.settings import Settings
from tests.conftest import SERVER_REDIS, new_prefix

# Thousands of Redis round trips: ~35 s on a quiet 2-core machine, past pytest's default 120 s when the
# machine is loaded (it hit that bound twice in full runs); the bound stays, sized for a busy machine.
pytestmark = pytest.mark.timeout(480)

WORKERS = ("w1", "w2")
LEGAL = {
    JobState.QUEUED: {JobState.QUEUED, JobState.RUNNING, JobState.CANCELED},
    JobState.RUNNING: {JobState.RUNNING, JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED},
    JobState.SUCCEEDED: {JobState.SUCCEEDED},
    JobState.FAILED: {JobState.FAILED, JobState.QUEUED},
    JobState.CANCELED: {JobState.CANCELED, JobState.QUEUED},
}


class JobMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.prefix = new_prefix("sm")
        self.now = 1_800_000_000.0
        self.settings = Settings(key_prefix=self.prefix, max_attempts=3, lease_seconds=5)
        self.redis = Redis.from_url(SERVER_REDIS)
        self.store = JobStore(self.redis, self.settings, clock=lambda: self.now)
        self.run(self.store.ensure_groups())
        self.readers = {w: QueueReader(self.redis, self.store.keys, w, self.settings.priority_weights) for w in WORKERS}
        self.reaper = Reaper(self.store)
        self.claims: dict[str, list[Claim]] = {w: [] for w in WORKERS}
        self.states: dict[str, JobState] = {}
        self.attempts: dict[str, int] = {}
        self.successes: dict[str, int] = {}

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        async def clean() -> None:
            keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
            if keys:
                await self.redis.delete(*keys)
            await self.redis.aclose()

        self.run(clean())
        self.loop.close()

    # --- rules ----------------------------------------------------------------------------------------------

    @rule(target=jobs, priority=st.sampled_from(["high", "normal", "low"]))
    def submit(self, priority: str) -> str:
        job = self.run(self.store.submit(Txt2ImgRequest(prompt="x", priority=priority))).job
        self.successes[job.job_id] = 0
        return job.job_id

    @rule(worker=st.sampled_from(WORKERS))
    def claim(self, worker: str) -> None:
        msg = self.run(self.readers[worker].try_next())
        if msg is None:
            return
        claim = self.run(self.store.claim(msg, worker))
        if claim is None:
            self.run(self.store.drop_message(msg))
        else:
            self.claims[worker].append(claim)

    def _pick(self, worker: str, index: int) -> Claim | None:
        held = self.claims[worker]
        return held[index % len(held)] if held else None

    @rule(worker=st.sampled_from(WORKERS), index=st.integers(0, 5))
    def heartbeat(self, worker: str, index: int) -> None:
        if (c := self._pick(worker, index)) is not None:
            if self.run(self.store.heartbeat(c)) == "lost":
                self.claims[worker].remove(c)

    @rule(worker=st.sampled_from(WORKERS), index=st.integers(0, 5))
    def complete(self, worker: str, index: int) -> None:
        if (c := self._pick(worker, index)) is not None:
            self.claims[worker].remove(c)
            before = self.run(self.store.raw(c.job_id))
            if self.run(self.store.complete(c, JobResult(seed=1))):
                self.successes[c.job_id] += 1
                assert before["state"] == "running" and int(before["attempt"]) == c.attempt, (
                    f"a stale claim (attempt {c.attempt}) overwrote {before['state']} attempt {before['attempt']}"
                )

    @rule(worker=st.sampled_from(WORKERS), index=st.integers(0, 5))
    def fail_permanent(self, worker: str, index: int) -> None:
        if (c := self._pick(worker, index)) is not None:
            self.claims[worker].remove(c)
            self.run(self.store.fail(c, ErrorInfo(code="INVALID_GRAPH", message="bad")))

    @rule(worker=st.sampled_from(WORKERS), index=st.integers(0, 5), delay=st.sampled_from([0.0, 1.0]))
    def fail_transient(self, worker: str, index: int, delay: float) -> None:
        if (c := self._pick(worker, index)) is not None:
            self.claims[worker].remove(c)
            err = ErrorInfo(code="BACKEND_UNAVAILABLE", message="refused", transient=True)
            self.run(self.store.give_up_attempt(c, err, delay=delay))

    @rule(worker=st.sampled_from(WORKERS))
    def read_then_crash(self, worker: str) -> None:
        """The worker reads a message and dies before claiming it."""
        self.run(self.readers[worker].try_next())

    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: str) -> None:
        self.claims[worker] = []  # the process is gone; its leases lapse

    @rule()
    def reap(self) -> None:
        # Every lease counts as lapsed: live workers' claims are taken too, and they must notice.
        self.run(self.reaper.run_once(min_idle_ms=0))

    @rule(seconds=st.sampled_from([0.5, 2.0]))
    def advance_clock_and_promote(self, seconds: float) -> None:
        self.now += seconds
        self.run(self.store.promote_due())

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        self.run(self.store.cancel(job_id))

    @rule(job_id=jobs)
    def retry(self, job_id: str) -> None:
        self.run(self.store.retry(job_id))

    # --- invariants -----------------------------------------------------------------------------------------

    @invariant()
    def states_are_legal_and_nothing_is_lost(self) -> None:
        async def check() -> None:
            delayed = {m.decode() for m in await self.redis.zrange(self.store.keys.delayed, 0, -1)}
            pending_ids: set[str] = set()
            entry_ids: set[str] = set()
            for prio in PRIORITIES:
                stream = self.store.keys.queue(prio)
                for msg_id, _ in await self.redis.xrange(stream):
                    entry_ids.add(msg_id.decode())
                for p in await self.redis.xpending_range(stream, GROUP, "-", "+", 10_000):
                    pending_ids.add(p["message_id"].decode())
            for job_id in self.successes:
                raw = await self.store.raw(job_id)
                assert raw, f"job {job_id} vanished"
                state, attempt = JobState(raw["state"]), int(raw["attempt"])
                prev = self.states.get(job_id, JobState.QUEUED)
                assert state in LEGAL[prev], f"{job_id}: illegal {prev} -> {state}"
                assert attempt >= self.attempts.get(job_id, 1), f"{job_id}: attempt went back"
                assert attempt <= int(raw["max_attempts"])
                if state == JobState.QUEUED:
                    on_queue = raw.get("msg_id") in entry_ids
                    assert on_queue or job_id in delayed, f"queued job {job_id} is on no queue: lost"
                elif state == JobState.RUNNING:
                    assert raw.get("msg_id") in pending_ids, f"running job {job_id} has no pending message"
                else:
                    assert raw.get("msg_id", "") == "", f"finished job {job_id} still holds a queue message"
                assert self.successes[job_id] <= 1, f"job {job_id} succeeded twice"
                if self.successes[job_id]:
                    assert state == JobState.SUCCEEDED
                self.states[job_id], self.attempts[job_id] = state, attempt

        self.run(check())


JobMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestJobStateMachine = JobMachine.TestCase
