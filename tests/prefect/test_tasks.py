"""The tasks in Prefect flow runs against a served comfyflow: a task Prefect retries after a forced failure finds
the job it submitted instead of making a second one; comfyflow's errors fail the task, retried only when
transient; img2img and batches of a previous result."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

from comfyflow.client import AsyncClient, TransportError, ValidationFailed
from comfyflow.prefect import ComfyflowCredentials, JobFailed, generate, img2img, is_transient
from comfyflow.prefect.tasks import _uploads
from tests.prefect_runs import task_runs

pytestmark = pytest.mark.prefect
TINY = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


async def own_jobs(api: Any) -> list[Any]:
    async with AsyncClient(api.base, api_key=api.key) as client:
        return [job async for job in client.list()]


async def test_a_task_retried_after_a_forced_failure_renders_once(comfyflow_api, fake, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    submitted: list[str] = []
    real_submit, real_wait = AsyncClient.submit, AsyncClient.wait

    async def submit(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        job = await real_submit(self, *args, **kwargs)
        submitted.append(job.job_id)
        return job

    async def wait(self: AsyncClient, job_id: str, **kwargs: Any) -> Any:
        if len(submitted) == 1:  # the first try loses its connection after the job was queued
            raise TransportError("connection reset while waiting (forced by the test)")
        return await real_wait(self, job_id, **kwargs)

    monkeypatch.setattr(AsyncClient, "submit", submit)
    monkeypatch.setattr(AsyncClient, "wait", wait)

    @flow(name="cf-retry-test")
    async def one_image(block: str) -> Any:
        credentials = await ComfyflowCredentials.load(block)
        result = await generate.with_options(retry_delay_seconds=0)(credentials, **TINY)
        from prefect.context import get_run_context

        return result, get_run_context().flow_run.id  # type: ignore[union-attr]

    result, flow_run_id = await one_image(comfyflow_api.block)
    assert len(submitted) == 2 and submitted[0] == submitted[1] == result.job_id, "the retry found the same job"
    assert result.status == "succeeded" and result.seed is not None and result.artifacts
    assert [job.job_id for job in await own_jobs(comfyflow_api)] == [result.job_id]
    assert sum(fake.prompts_posted.values()) == 1, fake.prompts_posted
    (run,) = await task_runs(flow_run_id)
    assert run.name.startswith("comfyflow-generate") and run.run_count == 2 and run.state.is_completed()


async def test_bad_input_fails_the_task_at_once_and_a_failed_job_is_not_retried(comfyflow_api, fake) -> None:  # type: ignore[no-untyped-def]
    @flow(name="cf-errors-test")
    async def bad(block: str, fields: dict[str, Any]) -> Any:
        credentials = await ComfyflowCredentials.load(block)
        return await generate.with_options(retry_delay_seconds=0)(credentials, **fields)

    state = await bad(comfyflow_api.block, {**TINY, "width": 65}, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValidationFailed) as info:
        await state.result()
    assert info.value.status == 422 and "width" in str(info.value.details)
    (run,) = await task_runs(state.state_details.flow_run_id)
    assert run.run_count == 1, "a 422 is not retried"

    fake.faults.fail_node_types = {"KSampler"}  # the job fails at run time
    state = await bad(comfyflow_api.block, TINY, return_state=True)
    with pytest.raises(JobFailed) as failed:
        await state.result()
    assert failed.value.status == "failed" and failed.value.error is not None
    (run,) = await task_runs(state.state_details.flow_run_id)
    assert run.run_count == 1
    assert len(await own_jobs(comfyflow_api)) == 1, "one job made, none for the bad request"


def test_which_errors_prefect_may_retry() -> None:
    from comfyflow.client.errors import error_from_response

    def err(status: int) -> Exception:
        return error_from_response(status, b'{"error": {"code": "X", "message": "m"}}', {})

    assert is_transient(TransportError("down")) and is_transient(err(503)) and is_transient(err(429))
    assert is_transient(err(409)) and is_transient(err(500))  # in-flight idempotency key, server error
    assert not any(is_transient(err(s)) for s in (400, 401, 402, 403, 404, 413, 422))
    assert not is_transient(JobFailed("j", "failed", None)) and not is_transient(ValueError("x"))


async def test_img2img_of_a_result_uploads_once_across_retries(comfyflow_api, fake, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uploads: list[str] = []
    real_upload, real_submit = AsyncClient.upload, AsyncClient.submit
    calls = {"submit": 0}

    async def upload(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        up = await real_upload(self, *args, **kwargs)
        uploads.append(up.upload_id)
        return up

    async def submit(self: AsyncClient, body: Any, **kwargs: Any) -> Any:
        calls["submit"] += 1
        job = await real_submit(self, body, **kwargs)
        if body.get("kind") == "img2img" and calls["submit"] == 2:  # the img2img's first try fails after queueing
            raise TransportError("connection reset (forced by the test)")
        return job

    monkeypatch.setattr(AsyncClient, "upload", upload)
    monkeypatch.setattr(AsyncClient, "submit", submit)

    @flow(name="cf-img2img-test")
    async def two_steps(block: str) -> Any:
        credentials = await ComfyflowCredentials.load(block)
        first = await generate(credentials, **TINY)
        second = await img2img.with_options(retry_delay_seconds=0)(credentials, first, prompt="a fox, ink", denoise=0.5,
                                                                   width=64, height=64, steps=2)  # fmt: skip
        return first, second

    first, second = await two_steps(comfyflow_api.block)
    assert len(uploads) == 1, "the retried img2img reused its upload"
    jobs = {job.job_id: job for job in await own_jobs(comfyflow_api)}
    assert set(jobs) == {first.job_id, second.job_id}
    assert jobs[second.job_id].request["init_image"] == uploads[0]
    assert jobs[second.job_id].request["kind"] == "img2img" and second.status == "succeeded"
    assert sum(fake.prompts_posted.values()) == 2
    assert len(_uploads) >= 1


async def test_a_retried_submit_batch_queues_one_batch(comfyflow_api, fake, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    made: list[str] = []
    real = AsyncClient.submit_batch

    async def submit_batch(self: AsyncClient, body: Any, **kwargs: Any) -> Any:
        batch = await real(self, body, **kwargs)
        made.append(batch.batch_id)
        if len(made) == 1:
            raise TransportError("connection reset after the batch was queued (forced by the test)")
        return batch

    monkeypatch.setattr(AsyncClient, "submit_batch", submit_batch)

    @flow(name="cf-batch-retry-test")
    async def sweep(block: str) -> Any:
        from comfyflow.prefect import submit_batch as submit
        from comfyflow.prefect import wait_for_batch

        credentials = await ComfyflowCredentials.load(block)
        queued = await submit.with_options(retry_delay_seconds=0)(credentials, base=TINY, sweep={"seed": [1, 2]})
        return await wait_for_batch(credentials, queued, poll_frequency_seconds=0.2)

    done = await sweep(comfyflow_api.block)
    assert made == [done.batch_id, done.batch_id]
    assert done.status == "succeeded" and done.total == 2 and [i.seed for i in done.items] == [1, 2]
    assert all(i.artifacts and i.artifacts[0].url for i in done.items)
    async with AsyncClient(comfyflow_api.base, api_key=comfyflow_api.key) as api:
        listed = await api._call("GET", "/api/v1/batches")
    assert [b["batch_id"] for b in listed["items"]] == [done.batch_id]
    assert sum(fake.prompts_posted.values()) == 2
