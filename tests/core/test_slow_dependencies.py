"""Slow dependencies: an S3 that accepts connections but never answers. botocore's timeouts do not cover every
wait (aiohttp waits for a PUT's ``100 Continue`` without any), so the store step bounds each call itself and the
job fails STORAGE_ERROR within its bound instead of hanging its worker slot forever."""

from __future__ import annotations

import socket

from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done


async def test_a_silent_s3_fails_the_store_step_within_its_bounds(fake, runtime_factory) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        options = {"endpoint_url": endpoint, "key": "k", "secret": "s", "client_kwargs": {"region_name": "us-east-1"}}
        rt = await runtime_factory(
            backends=[fake.url], storage_url="s3://bucket/prefix", storage_options=options, max_attempts=1,
            store_timeout_seconds=2.0, storage_call_timeout_seconds=1.0,
        )  # fmt: skip
        async with running_worker(rt):
            job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
            done = await wait_done(rt, job.job_id, timeout=60)
        assert done.status == JobState.FAILED and done.error is not None, done
        assert done.error.code == "STORAGE_ERROR", done.error
