"""The job ledger: every change of a job's state, each in one transaction.

Who commits: a function that a route, a loop or a service calls for a whole change (create,
cancel, delete, claim, dispatch) owns its transaction and ends it before it returns. The
steps that larger units of work are made of (add_job, end_attempt, record_epoch,
renew_lease, record_progress, prune_job, finish_job, release_job) only add to the caller's
transaction and say so; they never commit. The attempt posts that use them are one call
each, in api.workers.attempts.

Claims are a compare-and-set on the jobs row, so two workers that receive the
same message cannot both train the job; every later write names its attempt and
lease token, and a write from an attempt that no longer holds the job is refused.
"""

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    text,
    update,
)
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.core.db import is_postgresql
from api.core.dispatch import Dispatcher
from api.core.models import (
    AttemptOutcome,
    AttemptRow,
    CheckpointRow,
    EpochMetricRow,
    Job,
    JobStatus,
    JobTag,
    utcnow,
)
from api.core.submissions import open_submission
from api.jobs.live_progress import LiveProgress
from api.web.errors import (
    CheckpointRefused,
    JobNotCancellable,
    JobNotClaimable,
    JobNotDeletable,
    StaleAttempt,
    TooManyJobs,
)
from shared.analysis import Analysis
from shared.messages import (
    AttemptPost,
    BatchProgress,
    CheckpointRecord,
    EpochMetrics,
    FinishReport,
)
from shared.spec import JobSpec

ACTIVE_STATUSES = (JobStatus.queued, JobStatus.running)
# How long a tenant at its concurrent-job limit is asked to wait: about an epoch of a
# small model, when a slot may have come free.
JOB_SLOT_RETRY_SECONDS = 30
JOBS_TABLE = "jobs"


def active_jobs_of(tenant_id: str | ColumnElement[str]) -> SelectOfScalar[int]:
    """How many queued or running jobs the tenant has (an id, or a parameter for one)."""
    return (
        select(func.count())
        .select_from(Job)
        .where(col(Job.tenant_id) == tenant_id, col(Job.status).in_(ACTIVE_STATUSES))
    )


def reserve_job_slot(session: Session, tenant_id: str, max_active_jobs: int) -> None:
    """Raises TooManyJobs (ending the transaction) if the tenant, whose row the caller has
    locked, already has `max_active_jobs` queued or running."""
    active = session.exec(active_jobs_of(tenant_id)).one()
    if active >= max_active_jobs:
        session.rollback()
        raise TooManyJobs(
            f"you have {active} queued or running jobs and the limit is {max_active_jobs}; "
            "wait for one to finish or cancel one",
            headers={"Retry-After": str(JOB_SLOT_RETRY_SECONDS)},
            active_jobs=active,
            limit=max_active_jobs,
        )


def _insert_if_slot_free() -> Insert:
    """INSERT INTO jobs ... SELECT <the new row's values> WHERE <the tenant's queued and
    running jobs> < :max_active_jobs RETURNING id: the count and the insert in one
    statement, built once (its compiled form is cached on the engine)."""
    jobs = Job.metadata.tables[JOBS_TABLE]
    new_row = select(*(bindparam(column.key, type_=column.type) for column in jobs.columns))
    slot_free = active_jobs_of(bindparam("tenant_id")).scalar_subquery() < bindparam(
        "max_active_jobs"
    )
    return (
        insert(jobs).from_select(list(jobs.columns), new_row.where(slot_free)).returning(jobs.c.id)
    )


INSERT_IF_SLOT_FREE = _insert_if_slot_free()


def insert_if_slot_free(session: Session, job: Job, max_active_jobs: int) -> bool:
    """Inserts the job's row, in the caller's transaction, if its tenant has fewer than
    `max_active_jobs` queued or running; whether it did. One round trip to the database,
    and no ORM flush."""
    row = {column: getattr(job, column) for column in Job.metadata.tables[JOBS_TABLE].c.keys()}
    inserted = session.connection().execute(
        INSERT_IF_SLOT_FREE, {**row, "max_active_jobs": max_active_jobs}
    )
    return inserted.first() is not None


def new_job(
    tenant_id: str,
    spec: JobSpec,
    analysis: Analysis,
    name: str | None = None,
    **fields: Any,
) -> Job:
    """A new queued job, not yet stored."""
    return Job(
        tenant_id=tenant_id,
        name=name or spec.name,
        spec=spec.model_dump(mode="json"),
        analysis=analysis.summary(),
        epochs=spec.epochs,
        **fields,
    )


def tags_of(job: Job, spec: JobSpec) -> list[JobTag]:
    return [JobTag(job_id=job.id, tag=tag) for tag in spec.tags]


def add_job(
    session: Session,
    tenant_id: str,
    spec: JobSpec,
    analysis: Analysis,
    name: str | None = None,
    **fields: Any,
) -> Job:
    """Adds a new queued job and its tag rows, in the caller's transaction."""
    job = new_job(tenant_id, spec, analysis, name, **fields)
    session.add(job)
    session.add_all(tags_of(job, spec))
    return job


def create_job(
    session: Session,
    tenant_id: str,
    spec: JobSpec,
    analysis: Analysis,
    idempotency_key: str | None,
    body_hash: str,
    max_active_jobs: int,
) -> tuple[Job, bool]:
    """Stores a queued job; returns it and whether it is new.

    A replay of an earlier submission (same Idempotency-Key and body) answers with its job,
    even when the tenant is at its limit now. Otherwise the tenant's queued and running jobs
    are counted under the tenant's lock, so N simultaneous submissions at the limit accept
    exactly as many as there are free slots.
    """
    replayed = open_submission(session, Job, tenant_id, idempotency_key, body_hash)
    if replayed is not None:
        return replayed, False
    job = new_job(
        tenant_id, spec, analysis, idempotency_key=idempotency_key, request_hash=body_hash
    )
    # Refused: counted again, exactly, for the answer. Only a job that ended between the two
    # statements (the lock keeps new ones out) leaves a slot free, and then it is this one's.
    while not insert_if_slot_free(session, job, max_active_jobs):
        reserve_job_slot(session, tenant_id, max_active_jobs)
    session.add_all(tags_of(job, spec))
    session.commit()
    return job, True


def dispatch(
    session: Session, dispatcher: Dispatcher, job_id: str, at: datetime | None = None
) -> bool:
    """Rings the broker for a committed job and records when; False leaves it to the sweep."""
    if not dispatcher.send(job_id):
        return False
    record_dispatch(session, job_id, at or utcnow())
    return True


# When a job was sent is a hint for the sweep, not a promise to a client: a crash that loses
# it costs one more message, which a claim makes harmless. So on PostgreSQL the hint is one
# statement that commits itself (autocommit: no BEGIN, no COMMIT to wait for) and does not
# wait for the disk, as the job's own insert did: set_config(..., true) turns
# synchronous_commit off for that statement's own transaction only.
RECORD_DISPATCH_WITHOUT_FSYNC = text(
    "WITH no_fsync AS (SELECT set_config('synchronous_commit', 'off', true)) "
    "UPDATE jobs SET dispatched_at = :at, dispatches = jobs.dispatches + 1 "
    "FROM no_fsync WHERE jobs.id = :job_id"
)


def record_dispatch(session: Session, job_id: str, at: datetime) -> None:
    """Records that the job was sent at `at`, in a transaction of its own: the caller's, if
    one is open, is committed first."""
    session.commit()
    if is_postgresql(session):
        autocommit = session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        autocommit.execute(RECORD_DISPATCH_WITHOUT_FSYNC, {"at": at, "job_id": job_id})
    else:
        session.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .values(dispatched_at=at, dispatches=col(Job.dispatches) + 1)
            .execution_options(synchronize_session=False)
        )
    # Ends the session's transaction and gives its connection back to the pool.
    session.commit()


def end_attempt(session: Session, job_id: str, attempt: int, outcome: AttemptOutcome) -> None:
    """Closes an attempt's row if it is still open, in the caller's transaction."""
    session.execute(
        update(AttemptRow)
        .where(
            col(AttemptRow.job_id) == job_id,
            col(AttemptRow.attempt) == attempt,
            col(AttemptRow.outcome) == AttemptOutcome.running,
        )
        .values(outcome=outcome, ended_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def attempts_of(session: Session, job_id: str) -> list[AttemptRow]:
    return list(
        session.exec(
            select(AttemptRow).where(AttemptRow.job_id == job_id).order_by(col(AttemptRow.attempt))
        )
    )


def cancel_active_jobs(session: Session, *where: ColumnElement[bool]) -> list[str]:
    """Cancels the queued and running jobs that match `where`, closing each one's running
    attempt, in the caller's transaction; the ids of those it cancelled. A compare-and-set:
    a job that finished meanwhile keeps its final status. The attempt closed is the one each
    row held when the cancel matched, not one read before: a claim may have started another
    in between."""
    cancelled = session.execute(
        update(Job)
        .where(col(Job.status).in_(ACTIVE_STATUSES), *where)
        .values(status=JobStatus.cancelled, finished_at=utcnow(), lease_expires_at=None)
        .returning(col(Job.id), col(Job.attempts))
        .execution_options(synchronize_session=False)
    ).all()
    for job_id, attempt in cancelled:
        if attempt:
            end_attempt(session, job_id, attempt, AttemptOutcome.cancelled)
    return [job_id for job_id, _ in cancelled]


def cancel_job(session: Session, job: Job) -> Job:
    if JobStatus(job.status).finished:
        raise JobNotCancellable(f"job {job.id} is already {job.status}")
    cancelled = cancel_active_jobs(session, col(Job.id) == job.id)
    session.commit()
    session.refresh(job)
    if not cancelled:
        raise JobNotCancellable(f"job {job.id} is already {job.status}")
    return job


def may_try_again(lost_before: Any, max_attempts: int) -> Any:
    """Whether a job whose running attempt just lost its lease may train once more, given
    the attempts it lost that way before (handed-back attempts do not count). The one rule
    for the sweep's requeue and a claim's takeover; it reads the same on ints and on SQL
    expressions."""
    return lost_before + 1 < max_attempts


def lost_attempts(job_id: Any) -> Any:
    """How many attempts of `job_id` (a value or a column) ended by losing their lease, as
    a SQL expression."""
    return (
        select(func.count())
        .select_from(AttemptRow)
        .where(
            col(AttemptRow.job_id) == job_id,
            col(AttemptRow.outcome) == AttemptOutcome.lease_expired,
        )
        .scalar_subquery()
    )


def claim_job(
    session: Session, job_id: str, worker: str, lease_seconds: float, max_attempts: int
) -> Job:
    now = utcnow()
    token = secrets.token_hex(16)
    # A running job whose lease expired is taken over at once, without waiting for the
    # sweep, unless it has lost max_attempts that way: then the sweep fails it.
    claimable = or_(
        col(Job.status) == JobStatus.queued,
        and_(
            col(Job.status) == JobStatus.running,
            col(Job.lease_expires_at) < now,
            may_try_again(lost_attempts(col(Job.id)), max_attempts),
        ),
    )
    result = session.execute(
        update(Job)
        .where(col(Job.id) == job_id, claimable)
        .values(
            status=JobStatus.running,
            attempts=col(Job.attempts) + 1,
            worker=worker,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(col(Job.started_at), now),
            live_progress=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.rollback()
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotClaimable(f"no job {job_id}")
        raise JobNotClaimable(
            f"job {job_id} is {job.status}"
            + (" and leased to a live attempt" if job.status == "running" else "")
        )
    job = session.get(Job, job_id)
    assert job is not None  # the update above just matched it
    # Taken over straight from an expired lease, without a sweep in between.
    end_attempt(session, job.id, job.attempts - 1, AttemptOutcome.lease_expired)
    session.add(
        AttemptRow(
            job_id=job.id,
            attempt=job.attempts,
            worker=worker,
            start_epoch=job.epochs_completed,
            started_at=now,
        )
    )
    session.commit()
    return job


def release_job(session: Session, job: Job, attempt: int) -> None:
    """A worker that shuts down gives its job back: queued again, to resume from its last
    checkpoint; in the caller's transaction, which has checked that `attempt` holds the job."""
    job.status = JobStatus.queued
    job.worker = job.lease_token = job.lease_expires_at = job.dispatched_at = None
    job.dispatches = 0
    session.add(job)
    end_attempt(session, job.id, attempt, AttemptOutcome.handed_back)


# A job stopped from outside its attempt: the attempt's next post hears of it and stops.
STOPPED_STATUSES = (JobStatus.cancelled, JobStatus.pruned)


def _attempt_holds(
    job_id: str, post: AttemptPost, statuses: tuple[JobStatus, ...]
) -> ColumnElement[bool]:
    return and_(
        col(Job.id) == job_id,
        col(Job.attempts) == post.attempt,
        col(Job.lease_token) == post.lease_token,
        col(Job.status).in_(statuses),
    )


def _refuse_stale(session: Session, job_id: str, post: AttemptPost) -> StaleAttempt:
    session.rollback()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.attempts != post.attempt or job.lease_token != post.lease_token:
        return StaleAttempt(f"attempt {post.attempt} does not hold job {job_id}")
    return StaleAttempt(f"job {job_id} is {job.status}")


def lock_held_job(session: Session, job_id: str, post: AttemptPost) -> Job:
    """The job, locked for the caller's transaction, if `post` comes from the attempt that
    holds it: running, or stopped (cancelled or pruned) while it ran. StaleAttempt otherwise.

    The check is the lock: a conditional no-op UPDATE that matches only while the attempt
    holds the job takes the row's lock on PostgreSQL (and the write lock on SQLite), so no
    cancel, claim, sweep or other post can change the job until the caller commits, and
    everything the caller then writes by the job's key is written for this attempt alone.
    A cancel that committed first is seen here: the answer then says so."""
    held = session.execute(
        update(Job)
        .where(_attempt_holds(job_id, post, (JobStatus.running, *STOPPED_STATUSES)))
        .values(attempts=col(Job.attempts))
        .execution_options(synchronize_session=False)
    )
    if held.rowcount == 0:  # type: ignore[attr-defined]
        raise _refuse_stale(session, job_id, post)
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None  # the update above just matched it
    return job


def require_running_attempt(session: Session, job_id: str, post: AttemptPost) -> None:
    """Refuses (StaleAttempt) an attempt that no longer holds the job, or whose job was
    stopped from outside: such an attempt has nothing left to upload. A read, ended at once:
    nothing is written on the strength of it."""
    running = session.exec(
        select(Job.id).where(_attempt_holds(job_id, post, (JobStatus.running,)))
    ).first()
    if running is None:
        raise _refuse_stale(session, job_id, post)
    session.rollback()


def prune_job(session: Session, job: Job, attempt: int, reason: str) -> None:
    """The study's pruner stopped the trial after its last recorded epoch, in the caller's
    transaction. The attempt hears of it in the answer to its post."""
    job.status = JobStatus.pruned
    job.finished_at = utcnow()
    job.lease_expires_at = None
    job.pruned_reason = reason[:500]
    session.add(job)
    end_attempt(session, job.id, attempt, AttemptOutcome.pruned)


def renew_lease(job: Job, lease_seconds: float) -> None:
    """Extends the attempt's lease from now, in the caller's transaction."""
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)


def record_progress(job: Job, progress: BatchProgress) -> None:
    """Keeps a heartbeat's progress within the epoch, in the caller's transaction."""
    job.live_progress = LiveProgress.stored(progress)


def delete_job(session: Session, job: Job) -> None:
    """Removes an ended job and every row of it, in one transaction. A queued or running job
    is refused, and so is a study's trial: its study's record needs it."""
    if job.study_id is not None:
        raise JobNotDeletable(f"job {job.id} is trial {job.trial} of study {job.study_id}")
    # Compare-and-set: locks the row, and only while the job has ended.
    ended = session.execute(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.status).not_in(ACTIVE_STATUSES))
        .values(status=col(Job.status))
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 0:  # type: ignore[attr-defined]
        session.rollback()
        raise JobNotDeletable(
            f"job {job.id} is {job.status}; cancel it first, or wait until it ends"
        )
    for table in (JobTag, EpochMetricRow, CheckpointRow, AttemptRow):
        session.execute(
            delete(table)
            .where(col(table.job_id) == job.id)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        delete(Job).where(col(Job.id) == job.id).execution_options(synchronize_session=False)
    )
    session.commit()


def require_own_path(job_id: str, checkpoint: CheckpointRecord) -> None:
    """Checkpoints live at {job_id}/{name} in the artifact store, and nowhere else."""
    if checkpoint.path != f"{job_id}/{checkpoint.name}":
        raise CheckpointRefused(f"checkpoint path must be {job_id}/{checkpoint.name}")


def _beats_best(job: Job, metrics: EpochMetrics) -> bool:
    """Whether the epoch becomes the job's best: by validation accuracy when the job holds
    images out to validate on, never then by test; else by test accuracy. The first epoch
    to reach the highest stays the best."""
    if job.best_epoch is None:
        return True
    if metrics.val_accuracy is not None:
        return job.best_val_accuracy is None or metrics.val_accuracy > job.best_val_accuracy
    return job.best_test_accuracy is None or metrics.test_accuracy > job.best_test_accuracy


def record_epoch(
    session: Session,
    job: Job,
    attempt: int,
    metrics: EpochMetrics,
    checkpoint: CheckpointRecord | None,
) -> bool:
    """Idempotent by (job, epoch) and (job, checkpoint name): a repeated post changes nothing.
    Whether the epoch was new. In the caller's transaction."""
    if checkpoint is not None:
        require_own_path(job.id, checkpoint)
    new = session.get(EpochMetricRow, (job.id, metrics.epoch)) is None
    if new:
        session.add(EpochMetricRow(job_id=job.id, attempt=attempt, **metrics.model_dump()))
    if checkpoint is not None:
        row = session.get(CheckpointRow, (job.id, checkpoint.name))
        if row is None:
            session.add(CheckpointRow(job_id=job.id, attempt=attempt, **checkpoint.model_dump()))
        elif row.sha256 != checkpoint.sha256:
            # A later attempt uploaded the file again (the earlier one was corrupt): the
            # record follows the file, so its SHA-256 still vouches for what is stored.
            row.sqlmodel_update({"attempt": attempt, **checkpoint.model_dump()})
            session.add(row)
    job.epochs_completed = max(job.epochs_completed, metrics.epoch + 1)
    if _beats_best(job, metrics):
        job.best_epoch, job.best_test_accuracy = metrics.epoch, metrics.test_accuracy
        job.best_val_accuracy = metrics.val_accuracy
    session.add(job)
    return new


def finish_job(session: Session, job: Job, report: FinishReport) -> None:
    """The attempt's reported end, in the caller's transaction."""
    job.status = report.status
    job.finished_at = utcnow()
    job.lease_expires_at = None
    job.error = report.error.model_dump() if report.error else None
    job.result = report.result.model_dump() if report.result else None
    session.add(job)
    end_attempt(session, job.id, report.attempt, AttemptOutcome(report.status))
