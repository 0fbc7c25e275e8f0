"""Idempotency-Key fingerprints (comfyflow/core/submission.py): tagged ones from orjson's text, and keys recorded
with the untagged kind before still replay their job (or refuse another body) after an upgrade."""

from __future__ import annotations

from typing import Any

import pytest

from comfyflow.core.runtime import Runtime
from comfyflow.core.submission import (
    FINGERPRINT_TAG,
    RateCount,
    Submitter,
    fingerprint,
    legacy_fingerprint,
)
from comfyflow.errors import IdempotencyConflict
from comfyflow.models import Txt2ImgRequest
from tests.conftest import close_runtime


def test_fingerprints_ignore_field_order_and_tell_bodies_apart() -> None:
    a = Txt2ImgRequest(prompt="un renard roux \u00e9\U0001f98a", width=64, height=64, cfg_scale=7.5, labels=["x"])
    body = a.model_dump(mode="json")
    shuffled = dict(reversed(list(body.items())))
    assert fingerprint(a) == fingerprint(a, shuffled) and fingerprint(a).startswith(FINGERPRINT_TAG)
    assert legacy_fingerprint(a) == legacy_fingerprint(a, shuffled) and "." not in legacy_fingerprint(a)
    assert fingerprint(a) != fingerprint(a.model_copy(update={"cfg_scale": 7.0}))
    huge = {**body, "seed": 2**70}  # beyond orjson's integers: the untagged kind, still stable
    assert fingerprint(None, huge) == legacy_fingerprint(None, huge)


async def test_a_key_recorded_with_an_untagged_fingerprint_still_replays(make_settings: Any, redis_url: str) -> None:
    rt = await Runtime.open(make_settings(), redis_url, hot_line=True)
    try:
        submitter = Submitter(rt)
        request = Txt2ImgRequest(prompt="a red fox", width=64, height=64, steps=2)
        first = await submitter.submit(request, owner="alice", idempotency_key="k1")
        # the record as a version before the tag wrote it, for the same job
        idem = submitter.idem_key("alice", "k1")
        await rt.redis.set(idem, f"job:{legacy_fingerprint(request)}:{first.raw['id']}", ex=600)
        rate = RateCount(limit=100)
        again = await submitter.submit(request, owner="alice", idempotency_key="k1", rate_limit=rate)
        assert again.replayed and again.raw["id"] == first.raw["id"]
        assert rate.rate is not None and rate.rate[:2] == (True, 99)  # counted once, not once per call
        assert await rt.redis.zcard(rt.store.keys.ratelimit("alice")) == 1
        other = request.model_copy(update={"prompt": "a grey wolf"})
        with pytest.raises(IdempotencyConflict):
            await submitter.submit(other, owner="alice", idempotency_key="k1")
        # a key recorded now carries the tag, and compares as before
        await submitter.submit(request, owner="alice", idempotency_key="k2")
        assert (await rt.redis.get(submitter.idem_key("alice", "k2"))).decode().startswith(f"job:{FINGERPRINT_TAG}")
        assert (await submitter.submit(request, owner="alice", idempotency_key="k2")).replayed
        with pytest.raises(IdempotencyConflict):
            await submitter.submit(other, owner="alice", idempotency_key="k2")
        assert await rt.redis.zcard(rt.store.keys.owner_jobs("alice")) == 2
    finally:
        await close_runtime(rt)
