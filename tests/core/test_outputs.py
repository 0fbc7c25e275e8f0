"""Bad outputs from ComfyUI (truncated PNG, wrong magic bytes, a decompression bomb) fail the job with
BAD_OUTPUT and leave no artifact; good outputs of every image format pass the same check."""

from __future__ import annotations

import pytest

from comfyflow.models import JobState, Txt2ImgRequest
from tests.core.conftest import running_worker, wait_done


@pytest.mark.parametrize("how", ["truncated", "magic", "bomb"])
async def test_bad_image_output_fails_the_job_with_bad_output(fake, runtime_factory, how) -> None:  # type: ignore[no-untyped-def]
    rt = await runtime_factory(backends=[fake.url], max_attempts=3)
    fake.faults.bad_output = how
    async with running_worker(rt):
        job = (await rt.store.submit(Txt2ImgRequest(prompt="fox", width=64, height=64, steps=2))).job
        done = await wait_done(rt, job.job_id)
    assert done.status == JobState.FAILED, done
    assert done.error is not None and done.error.code == "BAD_OUTPUT", done.error
    assert done.attempt == 1, "a bad output is not retried"
    assert await rt.storage.list(f"jobs/{job.job_id}") == [], "no partial artifact"
