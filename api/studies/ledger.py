"""Every change of a study's state, each in one transaction: the study itself, each trial
with the job that trains it (or without one, when infeasible), cancel and the end."""

from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, func, select

from api.core.models import Job, Study, StudyStatus, TrialRow, utcnow
from api.core.submissions import lock_tenant, open_submission
from api.jobs.ledger import add_job, cancel_active_jobs, reserve_job_slot
from api.web.errors import StudyNotCancellable, TooManyStudies
from shared.analysis import Analysis
from shared.spec import JobSpec
from shared.study_spec import StudySpec

ACTIVE_STUDY_STATUSES = (StudyStatus.queued, StudyStatus.running)
# How long a tenant at its limit of studies is told to wait: studies run for minutes.
STUDY_SLOT_RETRY_SECONDS = 30


def create_study(
    session: Session,
    tenant_id: str,
    spec: StudySpec,
    idempotency_key: str | None,
    body_hash: str,
    max_active_studies: int,
    warm_trials: list[dict[str, Any]] | None = None,
) -> tuple[Study, bool]:
    """Stores a study (queued until its first trial), with the trials its warm start tells
    its sampler; returns it and whether it is new.
    Raises TooManyStudies when the tenant already has `max_active_studies` queued or
    running (a replay is answered all the same: it is no new study)."""
    replayed = open_submission(session, Study, tenant_id, idempotency_key, body_hash)
    if replayed is not None:
        return replayed, False
    _reserve_study_slot(session, tenant_id, max_active_studies)
    study = Study(
        tenant_id=tenant_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        warm_trials=warm_trials or [],
    )
    session.add(study)
    session.commit()
    return study, True


def _reserve_study_slot(session: Session, tenant_id: str, max_active_studies: int) -> None:
    # Under the tenant's row lock that open_submission took: two submissions at once count
    # one after the other.
    active = session.exec(
        select(func.count())
        .select_from(Study)
        .where(Study.tenant_id == tenant_id, col(Study.status).in_(ACTIVE_STUDY_STATUSES))
    ).one()
    if active >= max_active_studies:
        session.rollback()
        raise TooManyStudies(
            f"you have {active} queued or running studies and the limit is "
            f"{max_active_studies}; wait for one to end or cancel one",
            headers={"Retry-After": str(STUDY_SLOT_RETRY_SECONDS)},
            active_studies=active,
            limit=max_active_studies,
        )


def _trial_name(study: Study, number: int, confirms: int | None) -> str:
    label = study.name or study.id
    return f"{label} #{number}" + (f" (confirms #{confirms})" if confirms is not None else "")


def add_trial_job(
    session: Session,
    study: Study,
    number: int,
    params: dict[str, Any],
    spec: JobSpec,
    analysis: Analysis,
    max_active_jobs: int,
    system_attrs: dict[str, Any] | None = None,
    sampler_state: dict[str, Any] | None = None,
    confirms: int | None = None,
) -> tuple[TrialRow, Job] | None:
    """Queues trial `number` as a job of the study's tenant, with the sampler's state, in one
    transaction; the stored trial and its job. Raises TooManyJobs when the tenant has no free
    slot; returns None when the study ended or another scheduler stored this number first."""
    lock_tenant(session, study.tenant_id)
    reserve_job_slot(session, study.tenant_id, max_active_jobs)
    job = add_job(
        session,
        study.tenant_id,
        spec,
        analysis,
        name=_trial_name(study, number, confirms),
        study_id=study.id,
        trial=number,
    )
    session.flush()
    trial = TrialRow(
        study_id=study.id,
        number=number,
        params=params,
        job_id=job.id,
        confirms=confirms,
        system_attrs=system_attrs or {},
    )
    return (trial, job) if _store_trial(session, study, trial, sampler_state) else None


def add_infeasible_trial(
    session: Session,
    study: Study,
    number: int,
    params: dict[str, Any],
    reason: str,
    system_attrs: dict[str, Any],
    sampler_state: dict[str, Any],
) -> TrialRow | None:
    """Records a sampled spec that is never queued, and why; None when the study ended or the
    number was taken."""
    trial = TrialRow(
        study_id=study.id,
        number=number,
        params=params,
        reason=reason[:2000],
        system_attrs=system_attrs,
    )
    return trial if _store_trial(session, study, trial, sampler_state) else None


def _store_trial(
    session: Session, study: Study, trial: TrialRow, sampler_state: dict[str, Any] | None
) -> bool:
    # Compare-and-set on the study's row, in the trial's transaction: a study cancelled
    # since the scheduler read it gets no new trial.
    values: dict[str, Any] = {"status": StudyStatus.running}
    if sampler_state is not None:
        values["sampler_state"] = sampler_state
    still_running = session.execute(
        update(Study)
        .where(
            col(Study.id) == study.id,
            col(Study.status).in_(ACTIVE_STUDY_STATUSES),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not still_running.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.add(trial)
    try:
        session.commit()
    except IntegrityError:
        # The (study, number) key is taken: another scheduler got there first.
        session.rollback()
        return False
    _as_stored(study, **values)
    return True


def save_importances(
    session: Session, study: Study, importances: dict[str, float] | None, trials: int
) -> None:
    """Keeps the importances and how many trials they came from; the study's status is left
    as the database has it."""
    values = {"importances": importances, "importances_trials": trials}
    session.execute(
        update(Study)
        .where(col(Study.id) == study.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    _as_stored(study, **values)


def finish_study(session: Session, study: Study, error: dict[str, str] | None) -> bool:
    """Ends a study the scheduler found done; False (and nothing written) when it ended
    otherwise meanwhile: a cancel answered 200 is never overturned."""
    status = StudyStatus.failed if error else StudyStatus.succeeded
    finished_at = utcnow()
    ended = session.execute(
        update(Study)
        .where(col(Study.id) == study.id, col(Study.status).in_(ACTIVE_STUDY_STATUSES))
        .values(status=status, error=error, finished_at=finished_at)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if not ended.rowcount:  # type: ignore[attr-defined]
        session.refresh(study)
        return False
    _as_stored(study, status=status, error=error, finished_at=finished_at)
    return True


def count_scheduling_failure(session: Session, study: Study) -> int | None:
    """Adds one to the study's failed scheduler passes in a row, in its own transaction; the
    count, or None when the study ended meanwhile (nothing is written then)."""
    counted = session.execute(
        update(Study)
        .where(col(Study.id) == study.id, col(Study.status).in_(ACTIVE_STUDY_STATUSES))
        .values(scheduling_failures=col(Study.scheduling_failures) + 1)
        .execution_options(synchronize_session=False)
    )
    if not counted.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return None
    failures = session.exec(select(Study.scheduling_failures).where(Study.id == study.id)).one()
    session.commit()
    _as_stored(study, scheduling_failures=failures)
    return failures


def clear_scheduling_failures(session: Session, study: Study) -> None:
    """A pass over the study succeeded: its failures are no longer in a row."""
    session.execute(
        update(Study)
        .where(col(Study.id) == study.id)
        .values(scheduling_failures=0)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    _as_stored(study, scheduling_failures=0)


def cancel_study(session: Session, study: Study) -> Study:
    """Ends the study and cancels its queued and running trials, in one transaction: the
    scheduler stores no trial in a cancelled study, and no trial outlives the cancel."""
    ended = session.execute(
        update(Study)
        .where(col(Study.id) == study.id, col(Study.status).in_(ACTIVE_STUDY_STATUSES))
        .values(status=StudyStatus.cancelled, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not ended.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        session.refresh(study)
        raise StudyNotCancellable(f"study {study.id} is already {study.status}")
    cancel_active_jobs(session, col(Job.study_id) == study.id)
    session.commit()
    session.refresh(study)
    return study


def _as_stored(study: Study, **values: Any) -> None:
    """Sets what was just written by an UPDATE on the loaded study, without marking it
    changed: a later flush of the same object must never write these columns again (it
    could undo a cancel that came in between)."""
    for name, value in values.items():
        set_committed_value(study, name, value)
