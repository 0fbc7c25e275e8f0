"""AuthPolicy's rules on their own (no server): batch sizes, graph sizes, paths, loopback addresses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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


async def test_batch_size_per_role(policy: AuthPolicy) -> None:
    for role, limit in ((Role.FREE, 1), (Role.PRO, 4), (Role.INTERNAL, 10)):
        await policy.check_batch(who(role), limit)
        with pytest.raises(Forbidden) as exc:
            await policy.check_batch(who(role), limit + 1)
        assert exc.value.details["limit"] == limit
    await OpenPolicy().check_batch(LOCAL, 10_000)


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
