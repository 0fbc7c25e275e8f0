"""The job view built straight from the Redis hash (the hot path of submits and status polls) is exactly the view
built through the pydantic Job model, in every state without artifacts; jobs with artifacts take the model path."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio import Redis

from comfyflow.api.views import fast_job_view, job_view
from comfyflow.core.store import JobStore, _pairs, job_from_hash
from comfyflow.models import Principal, Role, Txt2ImgRequest


def _base(make_settings: Any) -> dict[str, str]:
    store = JobStore(Redis(), make_settings())  # never connects: only builds the hash
    req = Txt2ImgRequest(prompt="a red fox", seed=2**64 - 1, labels=["a", "b"], webhook="https://example.com/h")
    fields = store.job_fields(req, owner="alice", job_id="f" * 32, now=1796286516.501986, extra={"role": "pro"})
    pairs = _pairs(fields)
    return {str(pairs[i]): str(pairs[i + 1]) for i in range(0, len(pairs), 2)}


STATES: dict[str, dict[str, str]] = {
    "queued": {"msg_stream": "p:q:normal", "msg_id": "1-0"},
    "running": {
        "state": "running", "started_at": "1796286517.0", "render_started_at": "1796286517.25", "worker": "w1",
        "backend": "http://127.0.0.1:8188", "flow_run_id": "fr-1",
        "progress": json.dumps({"value": 0.5, "node": "3", "node_type": "KSampler", "step": 10, "max": 20,
                                "phase": "rendering"}),
    },
    "retrying": {
        "attempt": "2", "progress": json.dumps({"value": 0, "phase": "retrying"}),
        "last_error": json.dumps({"code": "BACKEND_UNAVAILABLE", "message": "x", "transient": True}),
    },
    "failed": {
        "state": "failed", "attempt": "3", "finished_at": "1796286530", "render_started_at": "1796286518.5",
        "render_finished_at": "1796286529.000001",
        "error": json.dumps({"code": "EXECUTION_ERROR", "message": "boom", "details": {"node": "3"}}),
    },
    "canceled": {"state": "canceled", "cancel": "1", "finished_at": "1796286520.123", "batch": "b" * 32},
}


def _caller(role: Role) -> Any:
    """Just what the views read of a request: its principal (no artifacts here, so no links are minted)."""
    return SimpleNamespace(ctx=SimpleNamespace(principal=Principal(id="alice", role=role)))


@pytest.mark.parametrize("role", [Role.INTERNAL, Role.FREE])
@pytest.mark.parametrize("state", sorted(STATES))
async def test_the_fast_view_is_the_model_view(make_settings: Any, state: str, role: Role) -> None:
    raw = {**_base(make_settings), **STATES[state]}
    fast = fast_job_view(_caller(role), raw)
    assert fast is not None
    slow = await job_view(_caller(role), job_from_hash(raw))
    assert fast == slow
    if role != Role.INTERNAL:  # a tenant's fast view hides what the model view hides
        assert "backend" not in fast and "flow_run_id" not in fast
    assert json.dumps(fast) == json.dumps(slow), "same keys in the same order, same types (0.0 is not 0)"


def test_jobs_with_artifacts_or_odd_hashes_take_the_model_path(make_settings: Any) -> None:
    raw = _base(make_settings)
    caller = _caller(Role.INTERNAL)
    assert fast_job_view(caller, {**raw, "result": json.dumps({"artifacts": []})}) is None
    assert fast_job_view(caller, {k: v for k, v in raw.items() if k != "created_at"}) is None
    assert fast_job_view(caller, {**raw, "progress": "not json"}) is None
