"""The API-key plugin: the auth contract, the key format, what is stored, expiry, revocation, users."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from comfyflow_apikey import KEY_PATTERN, ApiKeyAuth, new_key, parse_key
from comfyflow_apikey.keys import checksum
from redis.asyncio import Redis

from comfyflow.errors import NotFound, Unauthorized, ValidationError
from comfyflow.models import Role
from comfyflow.plugins import registry
from comfyflow.plugins.auth import KeyAdmin
from comfyflow.testing.auth_contract import AuthCase, RevocableAuthContract, bearer


class TestApiKeyAuth(RevocableAuthContract):
    expiry_wait = 1.2

    @pytest.fixture
    async def auth(self, redis: Redis, make_settings: Any) -> Any:
        plugin = ApiKeyAuth(make_settings(), redis=redis)
        users: dict[tuple[str, Role], str] = {}

        async def issue(role: Role, *, subject: str = "alice", expires_in: float | None = None) -> str:
            if (subject, role) not in users:
                users[subject, role] = (await plugin.create_user(subject, role)).id
            expires = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
            return (await plugin.create_key(users[subject, role], "contract", expires_at=expires)).key

        async def revoke(credential: str) -> None:
            parsed = parse_key(credential)
            assert parsed is not None
            await plugin.revoke_key(parsed.key_id)

        yield AuthCase(plugin, issue, revoke)
        await plugin.aclose()


@pytest.fixture
async def plugin(redis: Redis, make_settings: Any) -> ApiKeyAuth:
    return ApiKeyAuth(make_settings(), redis=redis)


def test_the_entry_point_names_the_plugin() -> None:
    assert registry.load("auth", "apikey") is ApiKeyAuth


def test_key_format_is_recognisable_and_checksummed() -> None:
    key, parsed = new_key()
    assert key.startswith("cf_live_") and len(key) == 59
    assert KEY_PATTERN.search(f"leaked: {key}.").group(0) == key  # type: ignore[union-attr]
    assert parse_key(key) == parsed
    assert parsed.digest == hashlib.sha256(key.encode()).hexdigest()
    body = key[:-6]
    assert checksum(body) == key[-6:]
    for i in range(8, len(key)):  # every one-character typo is caught by the checksum (or the format)
        if key[i] == "_":
            continue
        typo = key[:i] + ("a" if key[i] != "a" else "b") + key[i + 1 :]
        assert parse_key(typo) is None, i
    assert len({new_key()[0] for _ in range(200)}) == 200


async def test_a_typo_is_refused_without_a_lookup(make_settings: Any) -> None:
    """The checksum rejects a typo before Redis is asked: this plugin's Redis is not even reachable."""
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    plugin = ApiKeyAuth(make_settings(), redis=unreachable)
    key, _ = new_key()
    typo = key[:20] + ("x" if key[20] != "x" else "y") + key[21:]
    with pytest.raises(Unauthorized):
        await plugin.authenticate(bearer(typo))
    with pytest.raises(Exception) as exc:  # a well-formed key does need the lookup
        await plugin.authenticate(bearer(key))
    assert not isinstance(exc.value, Unauthorized)
    await unreachable.aclose()


async def test_only_the_hash_is_stored(plugin: ApiKeyAuth, redis: Redis) -> None:
    user = await plugin.create_user("alice", Role.FREE)
    issued = await plugin.create_key(user.id, "laptop")
    secret = issued.key[len("cf_live_") + 13 : -6]
    dump = b""
    async for name in redis.scan_iter(match=f"{plugin.prefix}:*"):
        kind = await redis.type(name)
        if kind == b"hash":
            dump += b"|".join(k + b"=" + v for k, v in (await redis.hgetall(name)).items())
        elif kind == b"zset":
            dump += b"|".join(await redis.zrange(name, 0, -1))
    assert secret.encode() not in dump and issued.key.encode() not in dump
    assert hashlib.sha256(issued.key.encode()).hexdigest().encode() in dump
    assert "hash" not in issued.info.model_dump()
    assert issued.info.prefix == f"cf_live_{issued.info.key_id}" and issued.info.status == "active"


async def test_a_wrong_secret_for_a_real_key_id_is_refused(plugin: ApiKeyAuth) -> None:
    user = await plugin.create_user("alice", Role.PRO)
    issued = await plugin.create_key(user.id, "k")
    forged_body = issued.key[: len("cf_live_") + 13] + "A" * 32
    forged = forged_body + checksum(forged_body)
    assert parse_key(forged) is not None  # well-formed, right checksum, known key id, wrong secret
    with pytest.raises(Unauthorized):
        await plugin.authenticate(bearer(forged))


async def test_expiry_revocation_disabling_and_role_change(plugin: ApiKeyAuth) -> None:
    user = await plugin.create_user("alice", Role.FREE)
    key = (await plugin.create_key(user.id, "k")).key
    assert (await plugin.authenticate(bearer(key))).role == Role.FREE  # type: ignore[union-attr]
    await plugin.update_user(user.id, role=Role.PRO)
    assert (await plugin.authenticate(bearer(key))).role == Role.PRO  # type: ignore[union-attr]
    await plugin.update_user(user.id, disabled=True)
    with pytest.raises(Unauthorized):
        await plugin.authenticate(bearer(key))
    await plugin.update_user(user.id, disabled=False)
    info = await plugin.revoke_key(parse_key(key).key_id)  # type: ignore[union-attr]
    assert info.status == "revoked" and info.revoked_at is not None
    again = await plugin.revoke_key(info.key_id)
    assert again.revoked_at == info.revoked_at  # idempotent: the first revocation time stays
    with pytest.raises(Unauthorized):
        await plugin.authenticate(bearer(key))
    with pytest.raises(ValidationError):
        await plugin.create_key(user.id, "past", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(NotFound):
        await plugin.create_key("u_missing", "k")
    with pytest.raises(NotFound):
        await plugin.revoke_key("nope")
    with pytest.raises(ValidationError):
        await plugin.create_user("", Role.FREE)


async def test_last_used_at_is_written_at_most_once_per_interval(redis: Redis, make_settings: Any) -> None:
    now = [1_800_000_000.0]
    plugin = ApiKeyAuth(make_settings(apikey_last_used_seconds=60), redis=redis, clock=lambda: now[0])
    user = await plugin.create_user("alice", Role.FREE)
    issued = await plugin.create_key(user.id, "k")
    assert issued.info.last_used_at is None
    await plugin.authenticate(bearer(issued.key))
    first = (await plugin.get_key(issued.info.key_id)).last_used_at  # type: ignore[union-attr]
    assert first is not None
    now[0] += 30
    await asyncio.gather(*(plugin.authenticate(bearer(issued.key)) for _ in range(20)))
    assert (await plugin.get_key(issued.info.key_id)).last_used_at == first  # type: ignore[union-attr]
    now[0] += 31
    await plugin.authenticate(bearer(issued.key))
    later = (await plugin.get_key(issued.info.key_id)).last_used_at  # type: ignore[union-attr]
    assert later is not None and (later - first).total_seconds() == pytest.approx(61)


async def test_listing(plugin: ApiKeyAuth) -> None:
    alice = await plugin.create_user("alice", Role.FREE)
    bob = await plugin.create_user("bob", Role.INTERNAL)
    k1 = await plugin.create_key(alice.id, "one")
    k2 = await plugin.create_key(alice.id, "two", expires_at=datetime.now(UTC) + timedelta(days=1))
    k3 = await plugin.create_key(bob.id, "ops")
    assert [u.name for u in await plugin.list_users()] == ["alice", "bob"]
    assert [k.key_id for k in await plugin.list_keys(alice.id)] == [k1.info.key_id, k2.info.key_id]
    assert {k.key_id for k in await plugin.list_keys()} == {k1.info.key_id, k2.info.key_id, k3.info.key_id}
    assert (await plugin.get_key(k2.info.key_id)).expires_at is not None  # type: ignore[union-attr]
    assert await plugin.get_user("u_nobody") is None


async def test_the_first_key_is_created_once_even_by_racing_servers(redis: Redis, make_settings: Any) -> None:
    plugins = [ApiKeyAuth(make_settings(), redis=redis) for _ in range(10)]
    assert all(isinstance(p, KeyAdmin) for p in plugins)
    results = await asyncio.gather(*(p.create_first_key("admin") for p in plugins))
    issued = [r for r in results if r is not None]
    assert len(issued) == 1
    principal = await plugins[0].authenticate(bearer(issued[0].key))
    assert principal is not None and principal.role == Role.INTERNAL
    assert await plugins[0].create_first_key("admin") is None
