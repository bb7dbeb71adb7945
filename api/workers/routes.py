"""Worker routes: claim a job, upload checkpoints, post epochs, heartbeat, finish, and
download a checkpoint to resume from. Not part of the public contract.

Every post names its attempt and lease token; the answer tells the worker whether
the job was cancelled. A repeated post (after a timeout) changes nothing.
"""

import re
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.artifacts.store import PLAIN_NAME
from api.auth.deps import WorkerRoute
from api.core.deps import DispatcherDep, SessionDep, SettingsDep, StoreDep, wake_scheduler
from api.core.models import Job, JobStatus
from api.jobs.downloads import checkpoint_response
from api.jobs.ledger import (
    claim_job,
    dispatch,
    finish_job,
    holding_attempt,
    record_epoch,
    record_progress,
    release_job,
    renew_lease,
    require_own_path,
)
from api.jobs.reads import checkpoint_named, checkpoints_of
from api.ops.metrics import attempt_started, epoch_recorded
from api.studies.pruning import prune_after_epoch
from api.web.errors import CheckpointNotFound
from api.web.problem_docs import problem_responses
from api.workers import uploads as checkpoint_uploads
from api.workers.stored_checkpoints import require_stored
from api.workers.uploads import UploaderDep, check_sha256
from shared.messages import (
    CHECKPOINT_SHA256_HEADER,
    AttemptAnswer,
    CheckpointRecord,
    CheckpointStored,
    Claim,
    ClaimRequest,
    EpochReport,
    FinishReport,
    HandBack,
    Heartbeat,
)
from shared.spec import JobSpec

# Every worker post may find that its attempt no longer holds the job, and an address past
# its limit of failed worker authentications is refused. The routes are documented on their
# own (api.workers.document), not in the public document.
router = APIRouter(
    prefix="/internal/v1/jobs",
    tags=["internal"],
    route_class=WorkerRoute,
    responses=problem_responses(409, 429),
)

CheckpointName = Annotated[str, Path(max_length=200, pattern=PLAIN_NAME)]
# The upload streams its body and limits it itself (max_checkpoint_bytes), in place of the
# limit every other request body gets (max_request_bytes).
OWN_BODY_LIMITS = [("PUT", re.compile(r"/internal/v1/jobs/[^/]+/checkpoints/[^/]+"))]
OCTET_STREAM = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}

CANCELLED = AttemptAnswer(cancelled=True)
PRUNED = AttemptAnswer(cancelled=False, pruned=True)
CARRY_ON = AttemptAnswer(cancelled=False)


def _free_trial_slot(request: Request, job: Job) -> None:
    """A trial ended: its slot can be filled now."""
    if job.study_id is not None:
        wake_scheduler(request)


def _stop_answer(job: Job) -> AttemptAnswer | None:
    """What to tell an attempt whose job was stopped from outside it; None: carry on."""
    if job.status == JobStatus.cancelled:
        return CANCELLED
    if job.status == JobStatus.pruned:
        return PRUNED
    return None


@router.post("/{job_id}/claim", response_model=Claim)
def claim(job_id: str, request: ClaimRequest, session: SessionDep, settings: SettingsDep) -> Claim:
    """Start a new attempt of a queued job (or of one whose lease expired)."""
    job = claim_job(session, job_id, request.worker, settings.lease_seconds)
    attempt_started()
    return Claim(
        job_id=job.id,
        attempt=job.attempts,
        lease_token=job.lease_token or "",
        lease_seconds=settings.lease_seconds,
        spec=JobSpec.model_validate(job.spec),
        checkpoints=[
            CheckpointRecord.model_validate(row, from_attributes=True)
            for row in checkpoints_of(session, job.id)
        ],
    )


@router.post("/{job_id}/epochs", response_model=AttemptAnswer)
def post_epoch(
    job_id: str,
    report: EpochReport,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> AttemptAnswer:
    """Record an epoch's metrics and its checkpoint (uploaded before); renews the lease."""
    job = holding_attempt(session, job_id, report)
    if (stop := _stop_answer(job)) is not None:
        return stop
    if report.checkpoint is not None:
        require_own_path(job.id, report.checkpoint)
        # Only a checkpoint the store holds with those bytes is recorded (422 otherwise):
        # a record the API could not serve would be a resume point that is not there.
        require_stored(store, job.id, report.checkpoint)
    # A repeated post (record_epoch keeps the first) is not observed twice.
    new_epoch = record_epoch(session, job, report.attempt, report.metrics, report.checkpoint)
    renew_lease(job, settings.lease_seconds)
    # A trial's epoch is told to its study's pruner, in the same transaction.
    pruned = job.study_id is not None and prune_after_epoch(session, job, report.attempt)
    session.commit()
    if new_epoch:
        epoch_recorded(report.metrics)
    if pruned:
        _free_trial_slot(request, job)
        return PRUNED
    return CARRY_ON


@router.post("/{job_id}/heartbeat", response_model=AttemptAnswer)
def heartbeat(
    job_id: str, beat: Heartbeat, session: SessionDep, settings: SettingsDep
) -> AttemptAnswer:
    """Keep the lease alive through a long epoch."""
    job = holding_attempt(session, job_id, beat)
    if (stop := _stop_answer(job)) is not None:
        return stop
    renew_lease(job, settings.lease_seconds)
    if beat.progress is not None:
        record_progress(job, beat.progress)
    session.add(job)
    session.commit()
    return CARRY_ON


@router.post("/{job_id}/finish", response_model=AttemptAnswer)
def finish(
    job_id: str, report: FinishReport, request: Request, session: SessionDep
) -> AttemptAnswer:
    """The attempt's end: succeeded, failed (with a reason) or stopped after a cancel."""
    job = holding_attempt(session, job_id, report)
    if (stop := _stop_answer(job)) is not None:
        return stop
    finish_job(session, job, report)
    session.commit()
    _free_trial_slot(request, job)
    return CARRY_ON


@router.post("/{job_id}/release", response_model=AttemptAnswer)
def release(
    job_id: str, report: HandBack, session: SessionDep, dispatcher: DispatcherDep
) -> AttemptAnswer:
    """The worker is shutting down: the job is queued again, for the next attempt to resume
    from its last checkpoint. A handed-back attempt does not count against max_attempts."""
    job = holding_attempt(session, job_id, report)
    if (stop := _stop_answer(job)) is not None:
        return stop
    release_job(session, job, report.attempt)
    session.commit()
    dispatch(session, dispatcher, job_id)
    return CARRY_ON


@router.put(
    "/{job_id}/checkpoints/{name}",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointStored,
    responses={
        200: {"model": CheckpointStored, "description": "Already stored, byte for byte"},
        **problem_responses(400, 413, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The checkpoint file, exactly as the worker wrote it",
            "content": OCTET_STREAM,
        }
    },
)
async def upload_checkpoint(
    job_id: str,
    name: CheckpointName,
    request: Request,
    response: Response,
    attempt: UploaderDep,
    settings: SettingsDep,
    store: StoreDep,
    sha256: Annotated[
        str,
        Header(
            alias=CHECKPOINT_SHA256_HEADER,
            pattern=r"^[0-9a-f]{64}$",
            description="The file's SHA-256, hex; a body that does not match it is refused",
        ),
    ],
    content_length: Annotated[int, Header(ge=0)],
) -> CheckpointStored:
    """Store a checkpoint file of the attempt that holds the job; its epoch post records it.
    The same name and bytes again change nothing (200)."""
    # Past the worker token, the attempt, the headers and the declared size, all checked
    # before the body is read; the body then streams to disk, within its own size limit.
    received = await checkpoint_uploads.receive(
        request, store.staging_dir, content_length, settings.max_checkpoint_bytes
    )
    try:
        check_sha256(received, sha256)
        engine = request.app.state.engine
        created = await run_in_threadpool(
            checkpoint_uploads.keep, store, engine, job_id, attempt, name, received
        )
    finally:
        received.discard()
    if not created:
        response.status_code = status.HTTP_200_OK
    return CheckpointStored(name=name, sha256=received.sha256, bytes=received.size)


@router.get(
    "/{job_id}/checkpoints/{name}",
    response_class=StreamingResponse,
    responses={
        200: {"content": OCTET_STREAM, "description": "The checkpoint file"},
        **problem_responses(404, 503),
    },
)
def download_checkpoint(
    job_id: str, name: CheckpointName, session: SessionDep, store: StoreDep
) -> StreamingResponse:
    """A recorded checkpoint of the job, for the attempt that resumes from it; check it
    against X-Checkpoint-SHA256."""
    row = checkpoint_named(session, job_id, name)
    if row is None:
        raise CheckpointNotFound(f"job {job_id} has no checkpoint {name!r}")
    return checkpoint_response(store, row)
