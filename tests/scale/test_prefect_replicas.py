"""Prefect scaled out: two API replicas (``--no-services``) and one services process on one PostgreSQL database,
their events on Redis (``prefect-redis``). Two ``comfyflow worker`` processes, each on its own replica, run jobs;
every flow run and its four task runs read back through both replicas (the task runs are recorded by the services
process from events the workers sent to the replicas: without Redis messaging they are lost); and the UI's Retry
sent through replica B runs the next attempt on the worker that talks to replica A, and the other way round."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from comfyflow.models import JobState, Txt2ImgRequest
from comfyflow.testing.prefect_replicas import prefect_replicas
from tests.scale.conftest import FAST, MODELS, Processes, wait_all, worker_env
from tests.waiting import until

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(360)]
STEPS = ["acquire_slot", "render", "store", "validate"]


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[str]]:
    with prefect_replicas(2) as urls:
        yield urls


async def _flow_run(api: str, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{api}/flow_runs/{run_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _task_runs(api: str, run_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"id": {"any_": [run_id]}}}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{api}/task_runs/filter", json=body)
    assert r.status_code == 200, r.text
    return list(r.json())


async def _recorded(api: str, run_id: str, *, retried: bool = False) -> bool:
    """The flow run is Completed and its (last) attempt's four steps are Completed task runs, read through ``api``.

    A retried run keeps its first attempt's task runs too, whose ``render`` failed.
    """
    tasks = await _task_runs(api, run_id)
    states = [(t["name"].rsplit("-", 1)[0], t["state"]["type"] if t["state"] else None) for t in tasks]
    completed = sorted(name for name, state in states if state == "COMPLETED")
    if retried:
        ok = ("render", "FAILED") in states and {*completed} == {*STEPS} and completed.count("render") == 1
    else:
        ok = completed == STEPS and len(states) == 4
    return ok and (await _flow_run(api, run_id))["state"]["type"] == "COMPLETED"


async def _flow_run_id(rt: Any, job_id: str) -> str:
    """The job's flow run id (named beside the attempt: it may land just after the job ended)."""
    found: list[str] = []

    async def named() -> bool:
        job = await rt.store.get(job_id)
        if job is not None and job.flow_run_id:
            found.append(job.flow_run_id)
        return bool(found)

    await until(named, timeout=30, what=f"job {job_id} names its flow run")
    return found[0]


async def _ui_retry(rt: Any, fakes: Any, processes: Processes, via: str, worker: str, replicas: list[str]) -> None:
    """A job fails; the UI's Retry is sent through replica ``via``; ``worker`` (on the other replica) reruns it."""
    for fake in fakes.values():
        fake.faults.fail_node_types = {"KSampler"}  # a runtime error: permanent, the job fails at once
    job_id = (await rt.store.submit(Txt2ImgRequest(prompt="retry", width=64, height=64, steps=2))).job.job_id
    (failed,) = await wait_all(rt, [job_id], timeout=120, procs=processes)
    assert failed.status == JobState.FAILED and failed.attempt == 1, failed
    run_id = await _flow_run_id(rt, job_id)

    async def failed_via() -> bool:
        return bool((await _flow_run(via, run_id))["state"]["type"] == "FAILED")

    await until(failed_via, timeout=30, what=f"the failed run, read through {via}")
    for fake in fakes.values():
        fake.faults.fail_node_types = set()
    state = {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}
    async with httpx.AsyncClient(timeout=10) as http:  # what the UI's Retry button sends
        r = await http.post(f"{via}/flow_runs/{run_id}/set_state", json={"state": state, "force": True})
    assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text

    async def retried() -> bool:
        cur = await rt.store.get(job_id)
        return cur is not None and cur.attempt == 2 and cur.status.terminal

    await until(retried, timeout=90, what=f"the retried job ran again\n{processes.logs()}")
    cur = await rt.store.get(job_id)
    assert cur is not None and cur.status == JobState.SUCCEEDED and cur.flow_run_id == run_id, cur
    retries = [ln for ln in processes.log(worker, tail=None).splitlines() if "retry from the Prefect UI" in ln]
    assert any(job_id in ln for ln in retries), f"{worker} picked up the Retry"
    for api in replicas:
        what = f"the retried run recorded ({api})"
        await until(lambda api=api: _recorded(api, run_id, retried=True), timeout=60, what=what)


async def _stop(processes: Processes, name: str) -> None:
    proc = processes.procs[name]
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 60)  # the fakes in this process keep serving meanwhile


async def test_two_api_replicas_record_every_job_and_retry_through_either(  # type: ignore[no-untyped-def]
    fakes, make_settings, redis_url, processes: Processes, replicas: list[str], scale_runtime
) -> None:
    a, b = replicas
    settings = make_settings(backends=[f.url for f in fakes.values()], redis_url=redis_url, **FAST)
    envs = [
        worker_env(
            settings, COMFYFLOW_PREFECT_ENABLED="true", COMFYFLOW_PREFECT_API_URL=api, COMFYFLOW_LOG_LEVEL="INFO"
        )
        for api in replicas
    ]
    for i, env in enumerate(envs):  # worker0 talks to replica A only, worker1 to replica B only
        processes.start(f"worker{i}", ["worker", "--concurrency", "2"], env)
    rt = await scale_runtime()
    try:
        ids = []
        for i in range(8):
            req = Txt2ImgRequest(prompt=f"fox {i}", width=64, height=64, steps=2, model=MODELS[i % 3])
            ids.append((await rt.store.submit(req)).job.job_id)
        jobs = await wait_all(rt, ids, timeout=180, procs=processes)
        assert all(j.status == JobState.SUCCEEDED for j in jobs), [j.error for j in jobs]
        runs = [await _flow_run_id(rt, j) for j in ids]
        for api in replicas:  # every run, with its four task runs, through either replica

            async def all_recorded(api: str = api) -> bool:
                return all([await _recorded(api, r) for r in runs])

            await until(all_recorded, timeout=60, what=f"all recorded ({api})")
        ran = {n: processes.log(n, tail=None).count("job succeeded") for n in ("worker0", "worker1")}
        # which worker claims which job is the queue's choice (one may take all 8); each replica's worker runs
        # jobs for certain in the two Retry phases below, where the other worker is stopped
        assert sum(ran.values()) == len(ids), f"every job ran once: {ran}"

        await _stop(processes, "worker1")  # Retry through replica B; the only worker talks to replica A
        await _ui_retry(rt, fakes, processes, b, "worker0", replicas)
        processes.start("worker2", ["worker", "--concurrency", "2"], envs[1])
        await _stop(processes, "worker0")  # Retry through replica A; the only worker talks to replica B
        await _ui_retry(rt, fakes, processes, a, "worker2", replicas)
    except BaseException:
        print(processes.logs())
        raise
