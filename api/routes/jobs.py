"""The tenant-facing job routes of API v1."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import Engine
from sqlmodel import Session

from api.deps import DispatcherDep, JobDep, SessionDep, SettingsDep, TenantDep
from api.errors import CheckpointNotFound
from api.ledger import cancel_job, create_job, dispatch, request_hash
from api.models import JobStatus
from api.problem_docs import problem_responses
from api.reads import (
    checkpoint_named,
    checkpoints_of,
    job_status,
    job_view,
    jobs_page,
    metrics_after,
)
from api.schemas import (
    CheckpointList,
    CheckpointPublic,
    JobList,
    JobPublic,
    MetricsPage,
    metrics_of,
)
from shared.checks import admit
from shared.messages import MAX_INT32
from shared.spec import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EVENT_POLL_SECONDS = 1.0


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "Idempotent replay"},
        **problem_responses(409),
    },
)
def submit_job(
    spec: JobSpec,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Validate a job spec, store it as queued, and hand it to a worker."""
    # Hashed as submitted, before its preset is resolved: a replay of the same body is the
    # same request, whatever the presets are today.
    body_hash = request_hash(spec.model_dump(mode="json"))
    stored, analysis = admit(spec, settings)
    job, created = create_job(
        session,
        tenant.id,
        stored,
        analysis,
        idempotency_key,
        body_hash,
        settings.max_concurrent_jobs,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
        return job_view(session, job)
    # Committed first, then sent: a job is never in the broker but not in the ledger. Sent
    # before answering, so one client's jobs reach the queue in the order it submitted them.
    dispatch(session, dispatcher, job.id)
    # A new job has no metrics, checkpoints or attempts yet: no need to ask the database.
    return JobPublic.build(job, None, [], [])


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[JobStatus | None, Query()] = None,
) -> JobList:
    """The tenant's jobs, newest first."""
    return jobs_page(session, tenant.id, limit, cursor, status)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job: JobDep, session: SessionDep) -> JobPublic:
    """One job: status, progress, latest metrics, best epoch, checkpoints."""
    return job_view(session, job)


@router.get("/{job_id}/metrics", response_model=MetricsPage)
def get_metrics(
    job: JobDep,
    session: SessionDep,
    # Bounded like the epoch column, so no number reaches the database as an overflow.
    since_epoch: Annotated[
        int | None, Query(ge=-1, le=MAX_INT32, description="Only rows after this epoch")
    ] = None,
) -> MetricsPage:
    """The job's per-epoch metrics rows, oldest first; `since_epoch=N` returns epochs after N."""
    rows = metrics_after(session, job.id, since_epoch)
    return MetricsPage(
        job_id=job.id, status=JobStatus(job.status), items=[metrics_of(row) for row in rows]
    )


def _events_since(engine: Engine, job_id: str, last_epoch: int) -> tuple[list[str], int, bool]:
    """The SSE frames for epochs after `last_epoch`, the newest epoch, and whether it ended."""
    with Session(engine) as session:
        # The status first: a job that ended after this read still sends its last epochs.
        state = job_status(session, job_id)
        frames = []
        for row in metrics_after(session, job_id, last_epoch):
            last_epoch = row.epoch
            frames.append(f"event: metrics\ndata: {metrics_of(row).model_dump_json()}\n\n")
        ended = state is None or state.finished
        if ended:
            end = {"status": str(state) if state else "unknown"}
            frames.append(f"event: status\ndata: {json.dumps(end)}\n\n")
    return frames, last_epoch, ended


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events(job: JobDep, request: Request) -> StreamingResponse:
    """Server-Sent Events: a `metrics` event per epoch, then a `status` event at the end."""
    engine = request.app.state.engine
    job_id = job.id

    async def events() -> AsyncIterator[str]:
        last_epoch, ended = -1, False
        while not ended and not await request.is_disconnected():
            # The database calls are blocking: keep them off the event loop.
            frames, last_epoch, ended = await run_in_threadpool(
                _events_since, engine, job_id, last_epoch
            )
            for frame in frames:
                yield frame
            if not ended:
                await asyncio.sleep(EVENT_POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=problem_responses(409))
def cancel(job: JobDep, session: SessionDep) -> JobPublic:
    """Cancel a queued or running job; a running one stops at its next batch."""
    return job_view(session, cancel_job(session, job))


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(job: JobDep, session: SessionDep) -> CheckpointList:
    """The job's checkpoints, with their SHA-256 and size."""
    return CheckpointList(
        items=[CheckpointPublic.from_row(row) for row in checkpoints_of(session, job.id)]
    )


@router.get(
    "/{job_id}/checkpoints/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_checkpoint(
    name: str, job: JobDep, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """Download one checkpoint file by its recorded name."""
    row = checkpoint_named(session, job.id, name)
    missing = CheckpointNotFound(f"job {job.id} has no checkpoint {name!r}")
    if row is None:
        raise missing
    root = settings.artifact_dir.resolve()
    path = (root / row.path).resolve()
    # Only files inside the artifact root are ever served, whatever a row says.
    if not path.is_relative_to(root) or not path.is_file():
        raise missing
    return FileResponse(
        Path(path),
        media_type="application/octet-stream",
        filename=row.name,
        headers={"X-Checkpoint-SHA256": row.sha256},
    )
