"""The job state machine again (tests/core/test_state_machine.py), now with owners that have running-job limits.

Extra invariants: an owner never runs more jobs than its limit; the claim script's running set is exactly the
owner's running jobs; a queued job is on a queue, in the delayed set, or parked in its owner's waiting list; and
a parked job always has something ahead of it that will wake it (a running, queued or delayed job of its owner),
so no job waits forever.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from comfyflow.core.keys import GROUP, PRIORITIES
from comfyflow.core.owners import set_owner_limits
from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.test_state_machine import LEGAL, JobMachine

# Thousands of Redis round trips: ~35 s on a quiet 2-core machine, past pytest's default 120 s when the
# machine is loaded (it hit that bound twice in full runs); the bound stays, sized for a busy machine.
pytestmark = pytest.mark.timeout(480)

LIMITS = {"o1": 1, "o2": 2, "o3": None}


class OwnerLimitMachine(JobMachine):
    def __init__(self) -> None:
        super().__init__()
        self.owner_of: dict[str, str] = {}
        for owner, limit in LIMITS.items():
            self.run(set_owner_limits(self.redis, self.store.keys, owner, max_running=limit, role="free"))

    @rule(
        target=JobMachine.jobs, priority=st.sampled_from(["high", "normal", "low"]), owner=st.sampled_from(list(LIMITS))
    )
    def submit(self, priority: str, owner: str) -> str:  # type: ignore[override]
        job = self.run(self.store.submit(Txt2ImgRequest(prompt="x", priority=priority), owner=owner)).job
        self.successes[job.job_id] = 0
        self.owner_of[job.job_id] = owner
        return job.job_id

    @invariant()
    def states_are_legal_and_nothing_is_lost(self) -> None:  # replaces the base check: parked jobs are not lost
        async def check() -> None:
            keys = self.store.keys
            delayed = {m.decode() for m in await self.redis.zrange(keys.delayed, 0, -1)}
            entries: set[str] = set()
            pending: set[str] = set()
            for prio in PRIORITIES:
                for msg_id, _ in await self.redis.xrange(keys.queue(prio)):
                    entries.add(msg_id.decode())
                for p in await self.redis.xpending_range(keys.queue(prio), GROUP, "-", "+", 10_000):
                    pending.add(p["message_id"].decode())
            parked = {o: [m.decode() for m in await self.redis.lrange(keys.owner_waiting(o), 0, -1)] for o in LIMITS}
            running_sets = {o: {m.decode() for m in await self.redis.smembers(keys.owner_running(o))} for o in LIMITS}
            running: dict[str, set[str]] = {o: set() for o in LIMITS}
            ahead: dict[str, bool] = dict.fromkeys(LIMITS, False)
            live_parked: dict[str, list[str]] = {o: [] for o in LIMITS}
            for job_id in self.successes:
                raw = await self.store.raw(job_id)
                assert raw, f"job {job_id} vanished"
                owner = self.owner_of[job_id]
                state, attempt = JobState(raw["state"]), int(raw["attempt"])
                prev = self.states.get(job_id, JobState.QUEUED)
                assert state in LEGAL[prev], f"{job_id}: illegal {prev} -> {state}"
                assert attempt >= self.attempts.get(job_id, 1), f"{job_id}: attempt went back"
                if state == JobState.QUEUED:
                    on_queue, is_delayed = raw.get("msg_id") in entries, job_id in delayed
                    is_parked = job_id in parked[owner] and not raw.get("msg_id")
                    assert on_queue or is_delayed or is_parked, f"queued job {job_id} is nowhere: lost"
                    if on_queue or is_delayed:
                        ahead[owner] = True
                    elif is_parked:
                        live_parked[owner].append(job_id)
                elif state == JobState.RUNNING:
                    assert raw.get("msg_id") in pending, f"running job {job_id} has no pending message"
                    running[owner].add(job_id)
                    ahead[owner] = True
                else:
                    assert raw.get("msg_id", "") == "", f"finished job {job_id} still holds a queue message"
                assert self.successes[job_id] <= 1, f"job {job_id} succeeded twice"
                self.states[job_id], self.attempts[job_id] = state, attempt
            for owner, limit in LIMITS.items():
                if limit is not None:
                    assert len(running[owner]) <= limit, f"{owner} runs {len(running[owner])} > {limit}"
                assert running_sets[owner] == running[owner], (owner, running_sets[owner], running[owner])
                assert not live_parked[owner] or ahead[owner], f"{owner}: {live_parked[owner]} parked, nothing ahead"

        self.run(check())


OwnerLimitMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestOwnerLimitMachine = OwnerLimitMachine.TestCase
