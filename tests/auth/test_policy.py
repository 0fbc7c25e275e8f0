"""AuthPolicy's rules on their own (no server): batch sizes, graph sizes, paths, loopback addresses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
from redis.asyncio import Redis

from comfyflow.api.auth_policy import AuthPolicy, is_loopback, is_path_escape
from comfyflow.api.policy import LOCAL, OpenPolicy
from comfyflow.core.keys import Keys
from comfyflow.errors import Forbidden, ValidationError
from comfyflow.models import Principal, RawGraphRequest, Role


@pytest.fixture
def policy(redis: Redis, make_settings: Any, prefix: str) -> AuthPolicy:
    settings = make_settings()
    runtime = SimpleNamespace(settings=settings, redis=redis, store=SimpleNamespace(keys=Keys(prefix)))
    return AuthPolicy.from_runtime(runtime)  # type: ignore[arg-type]


def who(role: Role) -> Principal:
    return Principal(id=f"u_{role.value}", role=role)


async def test_items_per_batch_per_role(policy: AuthPolicy, make_settings: Any) -> None:
    for role, limit in ((Role.FREE, 10), (Role.PRO, 100)):
        await policy.check_batch(who(role), limit)
        with pytest.raises(Forbidden) as exc:
            await policy.check_batch(who(role), limit + 1)
        assert exc.value.details["limit"] == limit
        assert f"COMFYFLOW_LIMITS__{role.value.upper()}__MAX_BATCH_ITEMS" in exc.value.message
    # INTERNAL: a whole sweep, up to COMFYFLOW_MAX_BATCH_ITEMS (enforced when the batch is expanded)
    await policy.check_batch(who(Role.INTERNAL), make_settings().max_batch_items)
    await OpenPolicy().check_batch(LOCAL, 10_000)


def test_the_two_limits_have_distinct_names_and_the_old_name_still_reads(make_settings: Any) -> None:
    limits = make_settings(limits={"pro": {"batch_size": 7, "max_images_per_job": 2}}).limits.pro
    assert (limits.max_batch_items, limits.max_images_per_job) == (7, 2)
    assert "batch_size" not in limits.model_dump()  # /api/v1/me names them max_batch_items and max_images_per_job
    unlimited = make_settings(limits={"free": {"max_batch_items": "none"}}).limits.free
    assert unlimited.max_batch_items is None
    with pytest.raises(pydantic.ValidationError, match="old name of max_batch_items"):
        make_settings(limits={"free": {"batch_size": 2, "max_batch_items": 3}})


async def test_graph_sizes_and_limits_recorded(policy: AuthPolicy, redis: Redis, prefix: str) -> None:
    def latent(**inputs: Any) -> RawGraphRequest:
        return RawGraphRequest(workflow={"1": {"class_type": "EmptyLatentImage", "inputs": inputs}})

    internal = who(Role.INTERNAL)
    await policy.check_request(internal, latent(width=2048, height=2048, batch_size=10))
    assert await redis.hget(Keys(prefix).owner_limits(internal.id), "max_running") == b"10"
    for too_much in (latent(width=2048, height=2056, batch_size=1), latent(width=64, height=64, batch_size=11)):
        with pytest.raises(Forbidden):
            await policy.check_request(internal, too_much)
    await policy.check_request(internal, latent(width="${w}", height=64))  # not a number: ComfyUI's to judge
    with pytest.raises(ValidationError):  # a Windows path: models.py lets it through, the policy does not
        await policy.check_request(internal, latent(width=64, height=64, filename_prefix="C:\\x"))


def test_path_escapes() -> None:
    for bad in ("/etc/passwd", "\\\\server\\share", "C:\\x", "c:/x", "~/x", "..", "a/../b", "..\\b", "a/..", "x\x00"):
        assert is_path_escape(bad), bad
    for ok in ("model.safetensors", "sub/model.ckpt", "a..b.png", "ComfyUI_00001_.png", "", "1..5"):
        assert not is_path_escape(ok), ok


def test_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "my-host", ""))
