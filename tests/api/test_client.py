"""The Python client (async and blocking) and the client CLI commands against a real server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from sanic import Request

from comfyflow.api.policy import OpenPolicy
from comfyflow.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    GenerationTimeout,
    JobTimeout,
    NotFoundError,
    ServiceUnavailableError,
    TransportError,
    ValidationFailed,
)
from comfyflow.errors import Unauthorized
from comfyflow.models import Principal, Role, Txt2ImgRequest
from comfyflow.testing.api_server import free_port
from tests.api.helpers import png

TINY: dict[str, Any] = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


async def test_async_client_end_to_end(api_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    async with AsyncClient(base) as client:
        assert (await client.health())["status"] in ("healthy", "degraded")
        assert "sd15-fake.safetensors" in (await client.models())["checkpoints"]

        job = await client.submit(prompt="a red fox", width=64, height=64, steps=3, labels=["client"])
        assert job.status == "queued" and job.labels == ["client"]
        done = await client.wait(job.job_id, timeout=20)
        assert done.status == "succeeded" and done.result is not None
        art = done.result.artifacts[0]
        assert hashlib.sha256(await client.download(art)).hexdigest() == art.sha256

        events = [ev async for ev in client.events(job.job_id)]
        assert events[-1].type == "done" and events[-1].data["status"] == "succeeded"
        tail = [ev async for ev in client.events(job.job_id, last_event_id=events[1].id)]
        assert [e.id for e in tail] == [e.id for e in events[2:]]

        # a request model, the same model as a dict, and an idempotent replay
        model = Txt2ImgRequest(**TINY, seed=5)
        first = await client.submit(model, idempotency_key="client-1")
        again = await client.submit(model.model_dump(), idempotency_key="client-1")
        assert first.job_id == again.job_id

        finished = await client.generate(TINY, seed=11, timeout=20)
        assert finished.status == "succeeded" and finished.result and finished.result.seed == 11

        image = tmp_path / "input.png"
        image.write_bytes(png(80, 48))
        up = await client.upload(image)
        assert (up.width, up.height, up.content_type) == (80, 48, "image/png")
        up2 = await client.upload(png(16, 16))
        assert up2.upload_id != up.upload_id
        img2img = await client.generate(TINY, init_image=up.upload_id, denoise=0.4, timeout=20)
        assert img2img.status == "succeeded" and img2img.request["kind"] == "img2img"

        listed = [j.job_id async for j in client.list(page_size=2)]
        assert listed[:2] == [img2img.job_id, finished.job_id] and job.job_id in listed
        assert len(listed) == len(set(listed)) == 4
        assert [j.job_id async for j in client.list(status="succeeded", limit=1)] == [img2img.job_id]
        page = await client.list_page(limit=1)
        assert len(page.items) == 1 and page.next_cursor

        with pytest.raises(ConflictError) as conflict:
            await client.retry(job.job_id)
        assert conflict.value.status == 409 and conflict.value.details == {"status": "succeeded"}


async def test_async_client_cancel_retry_and_typed_errors(api_factory, fake) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, max_queue_depth=2)
    async with AsyncClient(base) as client:
        job = await client.submit(TINY)
        canceled = await client.cancel(job.job_id)
        assert canceled.status == "canceled"
        retried = await client.retry(job.job_id)
        assert retried.status == "queued" and retried.attempt == 2

        with pytest.raises(JobTimeout) as waited:
            await client.wait(job.job_id, timeout=0.5)
        assert waited.value.job_id == job.job_id and isinstance(waited.value, TimeoutError)

        with pytest.raises(ValidationFailed) as invalid:
            await client.submit(TINY, width=4096, sampler="nope")
        exc = invalid.value
        assert exc.status == 422 and exc.code == "VALIDATION_ERROR" and exc.request_id
        assert {d["field"] for d in exc.details} == {"width", "sampler"}
        assert "422 VALIDATION_ERROR" in str(exc) and exc.request_id in str(exc)

        with pytest.raises(NotFoundError):
            await client.get("0" * 32)
        with pytest.raises(ValueError):
            await client.submit()

        await client.submit(TINY)
        with pytest.raises(ServiceUnavailableError) as full:
            await client.submit(TINY)
        assert full.value.retry_after == 5 and full.value.code == "BACKEND_UNAVAILABLE"

    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=2) as nowhere:
        with pytest.raises(TransportError):
            await nowhere.get("0" * 32)
    with pytest.raises(ValueError):
        AsyncClient("ftp://example.com")


async def test_generate_timeout_then_wait(api_factory, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 2.0
    base = await api_factory()
    async with AsyncClient(base) as client:
        with pytest.raises(GenerationTimeout) as timeout:
            await client.generate(TINY, timeout=1)
        assert timeout.value.status == 504 and timeout.value.job_id
        done = await client.wait(timeout.value.job_id, timeout=20)
        assert done.status == "succeeded"


class TokenPolicy(OpenPolicy):
    async def authenticate(self, request: Request) -> Principal:
        if request.headers.get("authorization") != "Bearer sekret":
            raise Unauthorized("A valid API key is required: send Authorization: Bearer <key>.")
        return Principal(id="token-user", role=Role.INTERNAL)


async def test_api_key_is_sent_as_bearer(api_factory) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False, policy=TokenPolicy())
    async with AsyncClient(base, api_key="sekret") as client:
        assert (await client.submit(TINY)).status == "queued"
    async with AsyncClient(base, api_key="wrong") as client:
        with pytest.raises(AuthenticationError) as denied:
            await client.submit(TINY)
        assert denied.value.status == 401 and denied.value.code == "UNAUTHORIZED"


def _sync_session(base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Client(base) as client:
        job = client.submit(TINY)
        out["done"] = client.wait(job.job_id, timeout=20)
        out["events"] = [ev.type for ev in client.events(job.job_id)]
        for ev in client.events(job.job_id):  # leaving a stream early closes it
            out["first"] = ev.type
            break
        out["listed"] = [j.job_id for j in client.list(limit=5)]
        out["generated"] = client.generate(TINY, timeout=20)
        out["upload"] = client.upload(png())
        out["health"] = client.health()
        try:
            client.get("nope")
        except NotFoundError as exc:
            out["error"] = exc
        out["job_id"] = job.job_id
    out["closed"] = client
    return out


async def test_blocking_client(api_factory) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    out = await asyncio.to_thread(_sync_session, base)
    assert out["done"].status == "succeeded"
    assert out["events"][-1] == "done" and out["first"] == "status"
    assert out["listed"] == [out["job_id"]]
    assert out["generated"].status == "succeeded"
    assert out["upload"].content_type == "image/png"
    assert out["error"].status == 404
    with pytest.raises(RuntimeError, match="closed"):
        out["closed"].get(out["job_id"])
    out["closed"].close()  # closing twice is fine


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``comfyflow <args>`` as a real process: (exit code, stdout, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYFLOW_")}
    full_env.update({"COLUMNS": "200", **(env or {})})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyflow.cli", *args, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_commands(api_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    env = {"COMFYFLOW_URL": base}
    code, out, err = await cli("submit", "a red fox", "--width", "64", "--height", "64", "--steps", "2",
                               "--label", "cli", "--url", base)  # fmt: skip
    job_id = out.strip()
    assert code == 0 and re.fullmatch(r"[0-9a-f]{32}", job_id), (out, err)
    assert f"comfyflow watch {job_id}" in err

    code, out, err = await cli("watch", job_id, env=env)
    assert code == 0 and "/api/v1/artifacts/" in out, (out, err)
    code, out, _ = await cli("status", job_id, env=env)
    assert code == 0 and "succeeded" in out and job_id in out
    code, out, _ = await cli("status", job_id, "--json", env=env)
    assert json.loads(out)["job_id"] == job_id

    request = tmp_path / "req.json"
    request.write_text(json.dumps({"prompt": "from a file", "width": 64, "height": 64, "steps": 2}))
    code, out, err = await cli("submit", "--file", str(request), "--seed", "3", "--watch", "--json", env=env)
    from_file = json.loads(out)
    assert code == 0 and from_file["request"]["prompt"] == "from a file" and from_file["result"]["seed"] == 3

    image = tmp_path / "in.png"
    image.write_bytes(png(32, 32))
    code, out, err = await cli("submit", "re-draw it", "--width", "64", "--height", "64", "--steps", "2",
                               "--init-image", str(image), "--watch", env=env)  # fmt: skip
    assert code == 0 and "uploaded" in err and "/api/v1/artifacts/" in out, (out, err)

    code, out, _ = await cli("jobs", "--status", "succeeded", "--limit", "2", env=env)
    assert code == 0 and out.count("succeeded") == 2
    code, out, _ = await cli("jobs", "--json", env=env)
    assert [j["request"]["prompt"] for j in json.loads(out)] == ["re-draw it", "from a file", "a red fox"]
    code, out, _ = await cli("cancel", job_id, env=env)
    assert code == 0 and out.strip() == f"{job_id} succeeded"

    code, _, err = await cli("submit", "x", "--width", "4096", env=env)
    assert code == 1 and err.strip().startswith("error: --width: ") and len(err.strip().splitlines()) == 1, err
    code, _, err = await cli("status", "0" * 32, env=env)
    assert code == 1 and "NOT_FOUND" in err and "request id" in err
    code, _, err = await cli("submit", env=env)
    assert code == 2
    code, _, err = await cli("submit", "--file", str(tmp_path / "absent.json"), env=env)
    assert code == 2 and "absent.json" in err
    code, _, err = await cli("jobs", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "Is the API up" in err


async def test_cli_errors_are_one_line_naming_the_option(tmp_path: Path) -> None:
    cases = [
        (("generate", "x", "--width", "-5"), "--width -5: must be at least 64"),
        (("generate", "x", "--steps", "0"), "--steps 0: must be at least 1"),
        (("batch", "submit", str(tmp_path / "missing.yaml")), "missing.yaml: file not found"),
        (("submit", "fox", "--init-image", str(tmp_path / "missing.png")), "--init-image: "),
    ]
    for args, expected in cases:
        code, _, err = await cli(*args, env={"COMFYFLOW_URL": f"http://127.0.0.1:{free_port()}"})
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, err)
        assert "Traceback" not in err and "--request" not in err
    assert "file not found" in err  # the missing image is named as a missing file, not as a bad upload id


async def test_cli_retry_runs_a_canceled_job_again_and_cancel_ends_its_progress(api_factory, fake) -> None:  # type: ignore[no-untyped-def]
    fake.render_time = 30.0
    base = await api_factory()
    env = {"COMFYFLOW_URL": base}
    async with AsyncClient(base) as client:
        job = await client.submit(TINY)
        for _ in range(300):  # until it renders
            if (await client.get(job.job_id)).progress.phase == "rendering":
                break
            await asyncio.sleep(0.05)
        assert (await client.get(job.job_id)).progress.phase == "rendering"
        code, _, _ = await cli("cancel", job.job_id, env=env)
        assert code == 0
        canceled = await client.wait(job.job_id, timeout=30)
        assert canceled.status == "canceled" and canceled.progress.phase == "canceled"
        fake.render_time = 0.1
        code, out, err = await cli("retry", job.job_id, env=env)
        assert code == 0 and out.strip() == f"{job.job_id} queued (attempt 2)", (out, err)
        done = await client.wait(job.job_id, timeout=60)
        assert done.status == "succeeded" and done.attempt == 2
    code, _, err = await cli("retry", "0" * 32, env=env)
    assert code == 1 and "NOT_FOUND" in err and len(err.strip().splitlines()) == 1


async def test_cli_watch_exit_code_for_a_failed_job(api_factory) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    async with AsyncClient(base) as client:
        job = await client.submit(TINY, model="missing.safetensors")
    code, _, err = await cli("watch", job.job_id, "--url", base)
    assert code == 1 and "INVALID_GRAPH" in err
