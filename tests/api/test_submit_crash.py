"""An API process killed in the middle of a submit with an Idempotency-Key (issue 11, item 5).

The process is "killed" right after its k-th Redis command reached the server, for every k until a submit
completes: that command ran, its reply is lost and nothing after it reaches Redis (as after SIGKILL). A retry with
the same key from another process must then be answered at once, with the one job the key stands for.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from comfyflow.core.runtime import Runtime
from comfyflow.core.submission import Submitter
from comfyflow.models import Txt2ImgRequest
from tests.conftest import close_runtime


class DyingRedis(Redis):
    """A client whose process dies after its ``die_after``-th command (a pipeline counts as one) ran on Redis."""

    die_after: int | None = None
    sent = 0
    dead = False

    def arm(self, die_after: int) -> None:
        self.die_after, self.sent, self.dead = die_after, 0, False

    def disarm(self) -> None:
        self.die_after, self.dead = None, False

    def _ran(self) -> None:
        if self.die_after is None:
            return
        self.sent += 1
        if self.sent >= self.die_after:
            self.dead = True
            raise RedisConnectionError("killed after this command ran")

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.dead:
            raise RedisConnectionError("the process is dead")
        result = await super().execute_command(*args, **options)
        self._ran()
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        owner = self

        class DyingPipeline(Pipeline):
            async def execute(self, raise_on_error: bool = True) -> Any:
                if owner.dead:
                    raise RedisConnectionError("the process is dead")
                result = await super().execute(raise_on_error)
                owner._ran()
                return result

        return DyingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


async def test_a_retry_after_the_api_died_mid_submit_succeeds_at_once(
    make_settings: Any, server_redis_url: str
) -> None:
    settings = make_settings(redis_url=server_redis_url)
    healthy = await Runtime.open(settings, server_redis_url)
    dying_client = DyingRedis.from_url(server_redis_url)
    dying = await Runtime.open(settings, server_redis_url, redis=dying_client)
    try:
        request = Txt2ImgRequest(prompt="a red fox", width=64, height=64, steps=2)
        await Submitter(healthy).submit(request, owner="warmup")  # the scripts are loaded on the server
        owner_jobs = healthy.store.keys.owner_jobs("alice")
        completed_at = None
        for k in range(1, 12):
            key = f"order-{k}"
            dying_client.arm(k)
            try:
                await Submitter(dying).submit(request, owner="alice", idempotency_key=key, daily_limit=100, day="d")
                completed_at = k
            except RedisConnectionError:
                pass
            finally:
                dying_client.disarm()
            before = await healthy.redis.zcard(owner_jobs)
            # the client retries with the same key at once, on another API process: no 409 "in progress"
            retry = await Submitter(healthy).submit(
                request, owner="alice", idempotency_key=key, daily_limit=100, day="d"
            )
            assert retry.job.status.value == "queued", (k, retry)
            again = await Submitter(healthy).submit(
                request, owner="alice", idempotency_key=key, daily_limit=100, day="d"
            )
            assert again.replayed and again.job.job_id == retry.job.job_id, k
            after = await healthy.redis.zcard(owner_jobs)
            assert after - before == (0 if retry.replayed else 1), (k, retry.replayed)
            assert after == k, f"one job per key, not {after} after {k} keys"
            if completed_at is not None:
                break
        assert completed_at is not None, "the submit never completed within 11 Redis commands"
    finally:
        dying_client.disarm()
        await dying.aclose()
        await close_runtime(healthy)
