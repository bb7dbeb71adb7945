"""Every change of a study's state, each in one transaction: the study itself, each trial
with the job that trains it (or without one, when infeasible), cancel and the end."""

from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from api.core.models import Job, Study, StudyStatus, TrialRow, utcnow
from api.core.submissions import lock_tenant, open_submission
from api.jobs.ledger import add_job, cancel_job, reserve_job_slot
from api.studies.reads import active_trial_jobs
from api.web.errors import JobNotCancellable, StudyNotCancellable
from shared.analysis import Analysis
from shared.spec import JobSpec
from shared.study_spec import StudySpec


def create_study(
    session: Session,
    tenant_id: str,
    spec: StudySpec,
    idempotency_key: str | None,
    body_hash: str,
) -> tuple[Study, bool]:
    """Stores a study (queued until its first trial); returns it and whether it is new."""
    replayed = open_submission(session, Study, tenant_id, idempotency_key, body_hash)
    if replayed is not None:
        return replayed, False
    study = Study(
        tenant_id=tenant_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        request_hash=body_hash,
    )
    session.add(study)
    session.commit()
    return study, True


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
            col(Study.status).in_([StudyStatus.queued, StudyStatus.running]),
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
    study.status = StudyStatus.running
    if sampler_state is not None:
        study.sampler_state = sampler_state
    return True


def save_importances(
    session: Session, study: Study, importances: dict[str, float] | None, trials: int
) -> None:
    study.importances = importances
    study.importances_trials = trials
    session.add(study)
    session.commit()


def finish_study(session: Session, study: Study, error: dict[str, str] | None) -> None:
    study.status = StudyStatus.failed if error else StudyStatus.succeeded
    study.error = error
    study.finished_at = utcnow()
    session.add(study)
    session.commit()


def cancel_study(session: Session, study: Study) -> Study:
    """Ends the study, then cancels each of its queued and running trials. The study ends
    first: the scheduler stores no trial in a cancelled study, so none is missed."""
    ended = session.execute(
        update(Study)
        .where(
            col(Study.id) == study.id,
            col(Study.status).in_([StudyStatus.queued, StudyStatus.running]),
        )
        .values(status=StudyStatus.cancelled, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(study)
    if not ended.rowcount:  # type: ignore[attr-defined]
        raise StudyNotCancellable(f"study {study.id} is already {study.status}")
    for job in active_trial_jobs(session, study.id):
        try:
            cancel_job(session, job)
        except JobNotCancellable:
            pass  # it finished meanwhile: nothing to cancel
    return study
