"""``comfyflow admin``: the first key comes from the command line, printed once; list, revoke, users, roles."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from comfyflow_apikey import ApiKeyAuth
from redis.asyncio import Redis
from typer.testing import CliRunner

from comfyflow.cli import app
from comfyflow.models import Principal
from comfyflow.settings import Settings
from comfyflow.testing.auth_contract import bearer


@pytest.fixture
def env(tmp_path: Path, prefix: str, server_redis_url: str) -> Iterator[dict[str, str]]:
    yield {"COMFYFLOW_REDIS_URL": server_redis_url, "COMFYFLOW_KEY_PREFIX": prefix, "COMFYFLOW_HOME": str(tmp_path)}
    client = sync_redis.Redis.from_url(server_redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _who(env: dict[str, str], key: str) -> Principal | None:
    async def main() -> Any:
        redis = Redis.from_url(env["COMFYFLOW_REDIS_URL"])
        try:
            settings = Settings(key_prefix=env["COMFYFLOW_KEY_PREFIX"])
            return await ApiKeyAuth(settings, redis=redis).authenticate(bearer(key))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def test_create_list_revoke_a_key(env: dict[str, str]) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["admin", "create-key", "--role", "internal", "--name", "ops"], env=env)
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("cf_live_") and "\n" not in key  # stdout holds the key alone
    assert "shown only now" in made.stderr
    principal = _who(env, key)
    assert principal is not None and principal.role.value == "internal" and principal.name == "ops"

    listed = runner.invoke(app, ["admin", "list-keys"], env=env, terminal_width=200)
    key_id = key[len("cf_live_") : len("cf_live_") + 12]
    assert listed.exit_code == 0 and key_id in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout

    more = runner.invoke(app, ["admin", "create-key", "--user", principal.id, "--name", "ci", "--expires-days", "1"],
                         env=env)  # fmt: skip
    assert more.exit_code == 0 and _who(env, more.stdout.strip()).id == principal.id  # type: ignore[union-attr]

    revoked = runner.invoke(app, ["admin", "revoke-key", key_id], env=env)
    assert revoked.exit_code == 0 and "revoked" in revoked.stderr
    with pytest.raises(Exception, match="revoked"):
        _who(env, key)
    missing = runner.invoke(app, ["admin", "revoke-key", "nope"], env=env)
    assert missing.exit_code == 1 and "No key 'nope'" in missing.stderr


def test_users_and_roles(env: dict[str, str]) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["admin", "create-user", "--name", "alice", "--role", "free"], env=env)
    user_id = made.stdout.strip()
    assert made.exit_code == 0 and user_id.startswith("u_")
    assert runner.invoke(app, ["admin", "set-role", user_id, "pro"], env=env).exit_code == 0
    key = runner.invoke(app, ["admin", "create-key", "--user", user_id, "--name", "k"], env=env).stdout.strip()
    assert _who(env, key).role.value == "pro"  # type: ignore[union-attr]
    assert runner.invoke(app, ["admin", "disable-user", user_id], env=env).exit_code == 0
    with pytest.raises(Exception, match="disabled"):
        _who(env, key)
    assert runner.invoke(app, ["admin", "enable-user", user_id], env=env).exit_code == 0
    listed = runner.invoke(app, ["admin", "list-users"], env=env, terminal_width=200)
    assert user_id in listed.stdout and "pro" in listed.stdout
    bad = runner.invoke(app, ["admin", "create-key", "--role", "root", "--name", "x"], env=env)
    assert bad.exit_code == 2
