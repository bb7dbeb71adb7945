"""Worker routes: claim a job, post epochs, heartbeat, finish. Not part of the public contract.

Every post names its attempt and lease token; the answer tells the worker whether
the job was cancelled. A repeated post (after a timeout) changes nothing.
"""

from fastapi import APIRouter, Request

from api.deps import DispatcherDep, SessionDep, SettingsDep, WorkerRoute, wake_scheduler
from api.ledger import (
    claim_job,
    dispatch,
    finish_job,
    holding_attempt,
    record_epoch,
    record_progress,
    release_job,
    renew_lease,
)
from api.metrics import attempt_started, epoch_recorded
from api.models import Job, JobStatus
from api.problem_docs import problem_responses
from api.reads import checkpoints_of
from api.trial_pruning import prune_after_epoch
from shared.messages import (
    AttemptAnswer,
    CheckpointRecord,
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
# own (api.worker_document), not in the public document.
router = APIRouter(
    prefix="/internal/v1/jobs",
    tags=["internal"],
    route_class=WorkerRoute,
    responses=problem_responses(409, 429),
)

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
) -> AttemptAnswer:
    """Record an epoch's metrics and checkpoint; renews the lease."""
    job = holding_attempt(session, job_id, report)
    if (stop := _stop_answer(job)) is not None:
        return stop
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
