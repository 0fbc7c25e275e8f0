"""What the tasks return: small, typed references (ids, seeds, links), never image bytes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from comfyflow.client import BatchInfo, BatchItem
from comfyflow.models import Durations, Job, JobResult


class ArtifactLink(BaseModel):
    """One output file of a job. ``url`` is a signed link that expires; read the job again for a fresh one."""

    index: int
    url: str | None
    content_type: str
    size: int
    sha256: str | None = None
    kind: str = "images"


class GenerationResult(BaseModel):
    """A finished job: its id, the seed it used, where it ran, how long it took, and links to its outputs."""

    job_id: str
    status: str
    seed: int | None = None
    backend: str | None = None
    attempt: int = 1
    artifacts: list[ArtifactLink] = Field(default_factory=list)
    job_url: str = Field(description="The job's API resource (GET it with the API key for fresh links).")
    durations: Durations = Field(default_factory=Durations)
    replayed: bool = Field(default=False, description="True when a retried task found the job it had made before.")

    @classmethod
    def from_job(cls, job: Job, base_url: str, *, replayed: bool = False) -> GenerationResult:
        result = job.result
        artifacts = _links(result, base_url)
        return cls(
            job_id=job.job_id, status=job.status.value, seed=result.seed if result else None,
            backend=(result.backend if result else None) or job.backend, attempt=job.attempt, artifacts=artifacts,
            job_url=f"{base_url}/api/v1/jobs/{job.job_id}", durations=job.durations, replayed=replayed,
        )  # fmt: skip


class BatchSubmission(BaseModel):
    """A queued batch: pass it (or its ``batch_id``) to ``wait_for_batch``."""

    batch_id: str
    total: int
    status: str
    batch_url: str
    replayed: bool = False


class BatchResult(BaseModel):
    """A finished batch: how it ended, its counts by job state, and every item with its links."""

    batch_id: str
    status: str
    total: int
    counts: dict[str, int]
    batch_url: str
    items: list[GenerationResult] = Field(default_factory=list)

    @classmethod
    def from_batch(cls, batch: BatchInfo, items: list[BatchItem], base_url: str) -> BatchResult:
        out = []
        for item in items:
            r = item.result
            arts = _links(r, base_url)
            out.append(GenerationResult(
                job_id=item.job_id, status=item.status, seed=r.seed if r else None, backend=r.backend if r else None,
                attempt=item.attempt, artifacts=arts, job_url=f"{base_url}/api/v1/jobs/{item.job_id}",
            ))  # fmt: skip
        return cls(batch_id=batch.batch_id, status=batch.status, total=batch.total, counts=batch.counts,
                   batch_url=f"{base_url}/api/v1/batches/{batch.batch_id}", items=out)  # fmt: skip


def _links(result: JobResult | None, base_url: str) -> list[ArtifactLink]:
    def absolute(url: str | None) -> str | None:
        return base_url + url if url and url.startswith("/") else url

    return [
        ArtifactLink(index=a.index, url=absolute(a.url), content_type=a.content_type, size=a.size, sha256=a.sha256,
                     kind=a.kind)
        for a in (result.artifacts if result else [])
    ]  # fmt: skip
