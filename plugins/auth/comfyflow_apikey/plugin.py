"""API keys and their users, in Redis: only each key's SHA-256 is stored, compared in constant time.

Key layout under ``<COMFYFLOW_KEY_PREFIX>:auth``::

    :key:<key id>        hash  user_id, name, hash, created_at, expires_at, revoked_at, last_used_at
    :keys                zset  every key id, by creation time
    :user:<user id>      hash  id, name, role, disabled, created_at
    :user:<user id>:keys zset  the user's key ids
    :users               zset  every user id, by creation time
    :bootstrap           string, while the first key is being created
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from comfyflow.errors import NotFound, Unauthorized, ValidationError
from comfyflow.models import Principal, Role
from comfyflow.plugins.auth import IssuedKey, KeyInfo, User, bearer_token
from comfyflow_apikey.keys import PREFIX, is_ours, new_key, parse_key

# One round trip: the key's record and its user's.
LOOKUP = """
local k = redis.call('HGETALL', KEYS[1])
if #k == 0 then return {{}, {}} end
local uid = redis.call('HGET', KEYS[1], 'user_id') or ''
return {k, redis.call('HGETALL', ARGV[1] .. uid)}
"""
# KEYS: key record, all keys, user's keys   ARGV: created_at, key id, field/value pairs...
CREATE_KEY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
return 1
"""
# KEYS: all keys, bootstrap marker. Only one process wins, and only while no key exists.
BOOTSTRAP = """
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 60) then return 1 end
return 0
"""
#: Compared against when a key id is unknown, so that case costs what a wrong secret costs.
_DUMMY = "0" * 64
NAME_MAX = 100


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _check_name(name: str, what: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(name) <= NAME_MAX or any(ord(c) < 32 for c in name):
        raise ValidationError(
            f"{what} name {name[:120]!r} is not valid; give 1-{NAME_MAX} printable characters.",
            details=[{"field": "name", "value": name[:120]}],
        )
    return name


class ApiKeyAuth:
    """The ``apikey`` auth plugin (an :class:`~comfyflow.plugins.auth.AuthPlugin` and a ``KeyAdmin``)."""

    scheme = "apikey"

    def __init__(self, settings: Any, *, redis: Redis, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.clock = clock
        self.prefix = f"{settings.key_prefix}:auth"
        self.touch_interval = float(getattr(settings, "apikey_last_used_seconds", 60.0))
        self._lookup = redis.register_script(LOOKUP)
        self._create = redis.register_script(CREATE_KEY)
        self._bootstrap = redis.register_script(BOOTSTRAP)

    # --- key layout ---------------------------------------------------------------------------------------------
    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:key:{key_id}"

    def _user(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}"

    def _user_keys(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}:keys"

    # --- authentication -----------------------------------------------------------------------------------------
    async def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        token = bearer_token(headers)
        if token is None or not is_ours(token):
            return None
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthorized("malformed API key (format or checksum)")
        raw_key, raw_user = await self._lookup(keys=[self._key(parsed.key_id)], args=[f"{self.prefix}:user:"])
        key, user = _pairs(raw_key), _pairs(raw_user)
        matches = hmac.compare_digest(key.get("hash") or _DUMMY, parsed.digest)
        if not key or not matches:
            raise Unauthorized("unknown API key")
        now = self.clock()
        if key.get("revoked_at"):
            raise Unauthorized("revoked API key")
        if key.get("expires_at") and now >= float(key["expires_at"]):
            raise Unauthorized("expired API key")
        if not user or user.get("disabled") == "1":
            raise Unauthorized("API key of a missing or disabled user")
        last = key.get("last_used_at")
        if not last or now - float(last) >= self.touch_interval:
            with contextlib.suppress(RedisError):  # bookkeeping must not fail a valid request
                await self.redis.hset(self._key(parsed.key_id), "last_used_at", repr(now))
        return Principal(id=user["id"], role=Role(user["role"]), key_id=parsed.key_id, name=user.get("name"))

    async def aclose(self) -> None:
        return None

    # --- users --------------------------------------------------------------------------------------------------
    async def create_user(self, name: str, role: Role) -> User:
        name = _check_name(name, "User")
        user = User(id=f"u_{secrets.token_hex(8)}", name=name, role=Role(role), created_at=datetime.now(UTC))
        now = self.clock()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._user(user.id), mapping={"id": user.id, "name": name, "role": user.role.value,
                                                    "disabled": "0", "created_at": repr(now)})  # fmt: skip
            pipe.zadd(f"{self.prefix}:users", {user.id: now})
            await pipe.execute()
        return user.model_copy(update={"created_at": _ts(repr(now))})

    async def get_user(self, user_id: str) -> User | None:
        raw = {_s(k): _s(v) for k, v in (await self.redis.hgetall(self._user(user_id))).items()}
        return self._user_from(raw) if raw.get("id") else None

    @staticmethod
    def _user_from(raw: dict[str, str]) -> User:
        created = _ts(raw.get("created_at")) or datetime.now(UTC)
        disabled = raw.get("disabled") == "1"
        return User(
            id=raw["id"], name=raw.get("name", ""), role=Role(raw["role"]), disabled=disabled, created_at=created
        )

    async def list_users(self) -> list[User]:
        ids = [_s(i) for i in await self.redis.zrange(f"{self.prefix}:users", 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in ids:
                pipe.hgetall(self._user(uid))
            rows = await pipe.execute()
        users = [{_s(k): _s(v) for k, v in row.items()} for row in rows]
        return [self._user_from(u) for u in users if u.get("id")]

    async def update_user(self, user_id: str, *, role: Role | None = None, disabled: bool | None = None) -> User:
        if await self.get_user(user_id) is None:
            raise NotFound(f"No user {user_id!r}.", details={"user_id": user_id})
        fields: dict[str, str] = {}
        if role is not None:
            fields["role"] = Role(role).value
        if disabled is not None:
            fields["disabled"] = "1" if disabled else "0"
        if fields:
            await self.redis.hset(self._user(user_id), mapping=fields)
        user = await self.get_user(user_id)
        assert user is not None
        return user

    # --- keys ---------------------------------------------------------------------------------------------------
    async def create_key(self, user_id: str, name: str, *, expires_at: datetime | None = None) -> IssuedKey:
        name = _check_name(name, "Key")
        if await self.get_user(user_id) is None:
            raise NotFound(f"No user {user_id!r}; create the user first.", details={"user_id": user_id})
        now = self.clock()
        expires = expires_at.timestamp() if expires_at is not None else None
        if expires is not None and expires <= now:
            raise ValidationError(
                f"expires_at {expires_at.isoformat()} is in the past; give a future time.",  # type: ignore[union-attr]
                details=[{"field": "expires_at"}],
            )
        for _ in range(5):  # a key id collision (62**12 ids) is practically impossible; still, never overwrite
            key, parsed = new_key()
            fields = ["user_id", user_id, "name", name, "hash", parsed.digest, "created_at", repr(now)]
            if expires is not None:
                fields += ["expires_at", repr(expires)]
            keys = [self._key(parsed.key_id), f"{self.prefix}:keys", self._user_keys(user_id)]
            if await self._create(keys=keys, args=[repr(now), parsed.key_id, *fields]):
                info = await self.get_key(parsed.key_id)
                assert info is not None
                return IssuedKey(key=key, info=info)
        raise RuntimeError("could not allocate a key id")  # pragma: no cover

    def _info(self, key_id: str, raw: dict[str, str]) -> KeyInfo:
        now = self.clock()
        expires = raw.get("expires_at")
        status = "revoked" if raw.get("revoked_at") else "expired" if expires and now >= float(expires) else "active"
        return KeyInfo(
            key_id=key_id, user_id=raw.get("user_id", ""), name=raw.get("name", ""), prefix=f"{PREFIX}{key_id}",
            created_at=_ts(raw.get("created_at")) or datetime.now(UTC), expires_at=_ts(expires),
            revoked_at=_ts(raw.get("revoked_at")), last_used_at=_ts(raw.get("last_used_at")), status=status,
        )  # fmt: skip

    async def get_key(self, key_id: str) -> KeyInfo | None:
        raw = {_s(k): _s(v) for k, v in (await self.redis.hgetall(self._key(key_id))).items()}
        return self._info(key_id, raw) if raw.get("user_id") else None

    async def list_keys(self, user_id: str | None = None) -> list[KeyInfo]:
        index = self._user_keys(user_id) if user_id is not None else f"{self.prefix}:keys"
        ids = [_s(i) for i in await self.redis.zrange(index, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for kid in ids:
                pipe.hgetall(self._key(kid))
            rows = await pipe.execute()
        out = []
        for kid, row in zip(ids, rows, strict=True):
            raw = {_s(k): _s(v) for k, v in row.items()}
            if raw.get("user_id"):
                out.append(self._info(kid, raw))
        return out

    async def revoke_key(self, key_id: str) -> KeyInfo:
        if await self.get_key(key_id) is None:
            raise NotFound(f"No key {key_id!r}.", details={"key_id": key_id})
        await self.redis.hsetnx(self._key(key_id), "revoked_at", repr(self.clock()))  # the first revocation time
        info = await self.get_key(key_id)
        assert info is not None
        return info

    async def create_first_key(self, name: str) -> IssuedKey | None:
        if not await self._bootstrap(keys=[f"{self.prefix}:keys", f"{self.prefix}:bootstrap"]):
            return None
        user = await self.create_user(name, Role.INTERNAL)
        return await self.create_key(user.id, name)
