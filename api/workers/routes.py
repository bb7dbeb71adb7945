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
from api.jobs.downloads import checkpoint_response
from api.jobs.ledger import claim_job
from api.jobs.reads import checkpoint_named, checkpoints_of
from api.ops.metrics import attempt_started, epoch_recorded
from api.web.errors import CheckpointNotFound
from api.web.problem_docs import problem_responses
from api.workers import attempts
from api.workers import uploads as checkpoint_uploads
from api.workers.attempts import PostResult
from api.workers.uploads import UploaderDep, check_sha256
from shared.messages import (
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
from shared.protocol import CHECKPOINT_SHA256_HEADER, CLAIM, JOBS_PREFIX, AttemptRoute
from shared.spec import JobSpec

# Every worker post may find that its attempt no longer holds the job, and an address past
# its limit of failed worker authentications is refused. The routes are documented on their
# own (api.workers.document), not in the public document.
router = APIRouter(
    prefix=JOBS_PREFIX,
    tags=["internal"],
    route_class=WorkerRoute,
    responses=problem_responses(409, 429),
)

CheckpointName = Annotated[str, Path(max_length=200, pattern=PLAIN_NAME)]
# The upload streams its body and limits it itself (max_checkpoint_bytes), in place of the
# limit every other request body gets (max_request_bytes).
OWN_BODY_LIMITS = [("PUT", re.compile(rf"{re.escape(JOBS_PREFIX)}/[^/]+/checkpoints/[^/]+"))]
OCTET_STREAM = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _free_trial_slot(request: Request, result: PostResult) -> None:
    """A trial ended: its slot can be filled now."""
    if result.trial_ended:
        wake_scheduler(request)


@router.post(f"/{{job_id}}/{CLAIM}", response_model=Claim)
def claim(job_id: str, request: ClaimRequest, session: SessionDep, settings: SettingsDep) -> Claim:
    """Start a new attempt of a queued job (or of one whose lease expired)."""
    job = claim_job(session, job_id, request.worker, settings.lease_seconds, settings.max_attempts)
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


@router.post(f"/{{job_id}}/{AttemptRoute.epochs.value}", response_model=AttemptAnswer)
def post_epoch(
    job_id: str,
    report: EpochReport,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> AttemptAnswer:
    """Record an epoch's metrics and its checkpoint (uploaded before); renews the lease."""
    result = attempts.post_epoch(session, job_id, report, store, settings.lease_seconds)
    if result.new_epoch:
        epoch_recorded(report.metrics)
    _free_trial_slot(request, result)
    return result.answer


@router.post(f"/{{job_id}}/{AttemptRoute.heartbeat.value}", response_model=AttemptAnswer)
def heartbeat(
    job_id: str, beat: Heartbeat, session: SessionDep, settings: SettingsDep
) -> AttemptAnswer:
    """Keep the lease alive through a long epoch."""
    return attempts.beat(session, job_id, beat, settings.lease_seconds).answer


@router.post(f"/{{job_id}}/{AttemptRoute.finish.value}", response_model=AttemptAnswer)
def finish(
    job_id: str, report: FinishReport, request: Request, session: SessionDep
) -> AttemptAnswer:
    """The attempt's end: succeeded, failed (with a reason) or stopped after a cancel."""
    result = attempts.finish(session, job_id, report)
    _free_trial_slot(request, result)
    return result.answer


@router.post(f"/{{job_id}}/{AttemptRoute.release.value}", response_model=AttemptAnswer)
def release(
    job_id: str, report: HandBack, session: SessionDep, dispatcher: DispatcherDep
) -> AttemptAnswer:
    """The worker is shutting down: the job is queued again, for the next attempt to resume
    from its last checkpoint. A handed-back attempt does not count against max_attempts."""
    return attempts.hand_back(session, job_id, report, dispatcher).answer


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
