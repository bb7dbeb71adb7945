"""The tenant-facing job routes of API v1."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.auth.deps import TenantDep
from api.core.deps import DispatcherDep, SessionDep, SettingsDep, StoreDep
from api.core.dispatch import Dispatcher
from api.core.models import JobStatus
from api.core.submissions import request_hash
from api.jobs.deps import JobDep
from api.jobs.downloads import checkpoint_response
from api.jobs.events import EVENT_DATA, JobStream, events_description, job_events_since
from api.jobs.ledger import cancel_job, create_job, delete_job, dispatch
from api.jobs.reads import (
    JobFilter,
    checkpoint_named,
    checkpoints_of,
    job_view,
    jobs_page,
    metrics_after,
)
from api.jobs.schemas import (
    CheckpointList,
    CheckpointPublic,
    JobList,
    JobPublic,
    MetricsPage,
    metrics_of,
)
from api.web.errors import CheckpointNotFound
from api.web.problem_docs import problem_responses
from api.web.sse import event_stream, event_stream_response
from shared.checks import admit
from shared.job_states import JobOrder
from shared.messages import MAX_INT32
from shared.settings import Settings
from shared.spec import JobSpec, Tag
from shared.strict import PRINTABLE

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# A page's cursor: the last job's id, or (best first) its accuracy and id; see api.jobs.reads.
# Stated exactly, so that every cursor the schema admits is one the server can page from.
JOB_ID = r"job_[0-9a-f]{24}"
CURSOR_PATTERN = rf"^({JOB_ID}|(-|[0-9]+(\.[0-9]+)?(e[+-]?[0-9]{{1,2}})?)~{JOB_ID})$"


@router.post(
    "",
    operation_id="submit_job",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "Idempotent replay"},
        **problem_responses(409),
    },
)
async def submit_job(
    spec: JobSpec,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Validate a job spec, store it as queued, and hand it to a worker."""
    # The whole submission in one trip to the thread pool. A plain `def` route would take a
    # second one: FastAPI validates a sync route's answer in the pool too.
    job, created = await run_in_threadpool(
        store_and_send, spec, session, tenant.id, settings, dispatcher, idempotency_key
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return job


def store_and_send(
    spec: JobSpec,
    session: Session,
    tenant_id: str,
    settings: Settings,
    dispatcher: Dispatcher,
    idempotency_key: str | None,
) -> tuple[JobPublic, bool]:
    """Stores a submitted job as queued and sends it; the job and whether it is new (an
    idempotent replay is not, and is not sent again)."""
    # Hashed as submitted, before its preset is resolved: a replay of the same body is the
    # same request, whatever the presets are today.
    body_hash = request_hash(spec.model_dump(mode="json"))
    stored, analysis = admit(spec, settings)
    job, created = create_job(
        session,
        tenant_id,
        stored,
        analysis,
        idempotency_key,
        body_hash,
        settings.max_concurrent_jobs,
    )
    if not created:
        return job_view(session, job), False
    # Committed first, then sent: a job is never in the broker but not in the ledger. Sent
    # before answering, so one client's jobs reach the queue in the order it submitted them.
    dispatch(session, dispatcher, job.id)
    # A new job has no metrics, checkpoints or attempts yet: no need to ask the database.
    return JobPublic.build(job, None, [], []), True


@router.get("", operation_id="list_jobs", response_model=JobList)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=CURSOR_PATTERN,
            description="`next_cursor` of the page before, in the same order",
        ),
    ] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    tag: Annotated[Tag | None, Query(description="Only jobs with this tag")] = None,
    name: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE, description="Only jobs of this name")
    ] = None,
    order: Annotated[
        JobOrder, Query(description="Newest first, or best test accuracy first")
    ] = JobOrder.created_at,
) -> JobList:
    """The tenant's jobs, newest first (or best first), filtered by status, tag and name."""
    where = JobFilter(status=status, tag=tag, name=name)
    return jobs_page(session, tenant.id, limit, cursor, where, order)


@router.get("/{job_id}", operation_id="get_job", response_model=JobPublic)
def get_job(job: JobDep, session: SessionDep) -> JobPublic:
    """One job: status, progress, latest metrics, best epoch, checkpoints."""
    return job_view(session, job)


@router.get("/{job_id}/metrics", operation_id="job_metrics", response_model=MetricsPage)
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


@router.get(
    "/{job_id}/events",
    operation_id="job_events",
    response_class=StreamingResponse,
    responses=event_stream_response(events_description(), EVENT_DATA),
)
async def stream_events(
    job: JobDep,
    request: Request,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> StreamingResponse:
    """Server-Sent Events: the job's status, progress within the epoch and each epoch's
    metrics, until it ends."""
    engine, job_id = request.app.state.engine, job.id
    stream = JobStream.resuming(last_event_id)
    return event_stream(
        request,
        job.tenant_id,
        lambda: job_events_since(engine, job_id, stream),
        settings.events_keepalive_seconds,
        settings.max_streams_per_tenant,
    )


@router.post(
    "/{job_id}/cancel",
    operation_id="cancel_job",
    response_model=JobPublic,
    responses=problem_responses(409),
)
def cancel(job: JobDep, session: SessionDep) -> JobPublic:
    """Cancel a queued or running job; a running one stops at its next batch."""
    return job_view(session, cancel_job(session, job))


@router.delete(
    "/{job_id}",
    operation_id="delete_job",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(409),
)
def delete(job: JobDep, session: SessionDep, store: StoreDep) -> Response:
    """Delete an ended job: its metrics, attempts and checkpoint files. A queued or running
    job is refused (409): cancel it first."""
    job_id = job.id
    delete_job(session, job)
    # The rows are gone first: a file left behind by a failed removal is only disk space,
    # while a row without its file would be a checkpoint that cannot be downloaded.
    store.delete_job(job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/checkpoints", operation_id="list_checkpoints", response_model=CheckpointList)
def list_checkpoints(job: JobDep, session: SessionDep) -> CheckpointList:
    """The job's checkpoints, with their SHA-256 and size."""
    return CheckpointList(
        items=[CheckpointPublic.from_row(row) for row in checkpoints_of(session, job.id)]
    )


@router.get(
    "/{job_id}/checkpoints/{name}",
    operation_id="download_checkpoint",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The checkpoint file (a PyTorch state dict, torch.load-able)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "headers": {
                "X-Checkpoint-SHA256": {
                    "description": "The file's SHA-256, hex: check the download against it",
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "required": True,
                }
            },
        },
        # A bucket store that cannot be reached.
        **problem_responses(503),
    },
)
def download_checkpoint(
    name: str, job: JobDep, session: SessionDep, store: StoreDep
) -> StreamingResponse:
    """Download one checkpoint file by its recorded name."""
    row = checkpoint_named(session, job.id, name)
    if row is None:
        raise CheckpointNotFound(f"job {job.id} has no checkpoint {name!r}")
    # Streamed from the store by the job and the recorded name, never by the row's path:
    # nothing outside the job's folder or prefix can be reached, whatever a row says.
    return checkpoint_response(store, row)
