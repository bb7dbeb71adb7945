"""What an attempt's posts change in the ledger: each post is one call and one transaction.

Every post names its attempt and lease token, and `_attempt_write` opens them all: the
attempt must still hold the job (409 otherwise), and a job stopped from outside the attempt
(cancelled, or pruned by its study) is answered with that news and nothing is written.
An epoch post reaches both the job and, for a trial, its study's pruner, which is why this
lives above jobs/ and studies/.
"""

from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session

from api.artifacts.store import ArtifactStore
from api.core.dispatch import Dispatcher
from api.core.models import Job, JobStatus
from api.jobs.ledger import (
    dispatch,
    finish_job,
    lock_held_job,
    record_epoch,
    record_progress,
    release_job,
    renew_lease,
    require_own_path,
)
from api.studies.pruning import prune_after_epoch
from api.workers.stored_checkpoints import require_stored
from shared.messages import (
    AttemptAnswer,
    AttemptPost,
    EpochReport,
    FinishReport,
    HandBack,
    Heartbeat,
)

CANCELLED = AttemptAnswer(cancelled=True)
PRUNED = AttemptAnswer(cancelled=False, pruned=True)
CARRY_ON = AttemptAnswer(cancelled=False)


@dataclass(frozen=True)
class PostResult:
    """The answer for the worker, and what the route does once the transaction committed."""

    answer: AttemptAnswer
    # An epoch recorded for the first time (a repeated post is not observed twice).
    new_epoch: bool = False
    # A study's trial ended here: its slot can be filled now.
    trial_ended: bool = False


def _stop_answer(job: Job) -> AttemptAnswer | None:
    """What to tell an attempt whose job was stopped from outside it; None: carry on."""
    if job.status == JobStatus.cancelled:
        return CANCELLED
    if job.status == JobStatus.pruned:
        return PRUNED
    return None


def _attempt_write(
    session: Session, job_id: str, post: AttemptPost, write: Callable[[Job], PostResult]
) -> PostResult:
    """Runs `write` for the attempt that holds the job and commits it; a job stopped from
    outside is answered at once. Raises StaleAttempt for an attempt that lost the job."""
    job = lock_held_job(session, job_id, post)
    if (stop := _stop_answer(job)) is not None:
        session.rollback()
        return PostResult(stop)
    result = write(job)
    session.commit()
    return result


def post_epoch(
    session: Session,
    job_id: str,
    report: EpochReport,
    store: ArtifactStore,
    lease_seconds: float,
) -> PostResult:
    """Records an epoch's metrics and its checkpoint (uploaded before), renews the lease, and
    tells a trial's epoch to its study's pruner, all in one transaction."""

    def write(job: Job) -> PostResult:
        if report.checkpoint is not None:
            require_own_path(job.id, report.checkpoint)
            # Only a checkpoint the store holds with those bytes is recorded (422 otherwise):
            # a record the API could not serve would be a resume point that is not there.
            require_stored(store, job.id, report.checkpoint)
        new_epoch = record_epoch(session, job, report.attempt, report.metrics, report.checkpoint)
        renew_lease(job, lease_seconds)
        pruned = job.study_id is not None and prune_after_epoch(session, job, report.attempt)
        return PostResult(PRUNED if pruned else CARRY_ON, new_epoch=new_epoch, trial_ended=pruned)

    return _attempt_write(session, job_id, report, write)


def beat(session: Session, job_id: str, heartbeat: Heartbeat, lease_seconds: float) -> PostResult:
    """Renews the lease, keeping the progress within the epoch that the beat carries."""

    def write(job: Job) -> PostResult:
        renew_lease(job, lease_seconds)
        if heartbeat.progress is not None:
            record_progress(job, heartbeat.progress)
        session.add(job)
        return PostResult(CARRY_ON)

    return _attempt_write(session, job_id, heartbeat, write)


def finish(session: Session, job_id: str, report: FinishReport) -> PostResult:
    """The attempt's end: succeeded, failed (with a reason) or stopped after a cancel."""

    def write(job: Job) -> PostResult:
        finish_job(session, job, report)
        return PostResult(CARRY_ON, trial_ended=job.study_id is not None)

    return _attempt_write(session, job_id, report, write)


def hand_back(
    session: Session, job_id: str, report: HandBack, dispatcher: Dispatcher
) -> PostResult:
    """A worker shutting down gives the job back: queued again, and sent once committed, for
    the next attempt to resume from its last checkpoint."""

    def write(job: Job) -> PostResult:
        release_job(session, job, report.attempt)
        return PostResult(CARRY_ON)

    result = _attempt_write(session, job_id, report, write)
    if result.answer == CARRY_ON:
        dispatch(session, dispatcher, job_id)
    return result
