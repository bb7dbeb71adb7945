"""Each epoch a trial's worker reports is told to its study's pruner; when the pruner says
stop, the job ends `pruned` and the answer to that post tells the worker."""

from sqlmodel import Session

from api.core.models import Job, Study, StudyStatus
from api.jobs.ledger import prune_job
from api.studies.optuna_bridge import decide_pruning
from api.studies.reads import optuna_records, study_trials, trial_of_job


def prune_after_epoch(session: Session, job: Job, attempt: int) -> bool:
    """Asks the pruner about the trial's newest epoch (already recorded, not yet committed);
    prunes the job if it says so. The last epoch is never pruned: the trial is done."""
    study = session.get(Study, job.study_id)
    trial = trial_of_job(session, job)
    if study is None or trial is None or trial.confirms is not None:
        return False  # confirmation runs always train to the end
    spec = study.parsed_spec()
    if spec.pruner.name == "none" or job.epochs_completed >= job.epochs:
        return False
    if StudyStatus(study.status).finished:
        return False
    session.flush()
    records = optuna_records(spec, study_trials(session, study))
    decision = decide_pruning(study.id, spec, study.sampler_state, records, trial.number)
    if decision.system_attrs != trial.system_attrs:
        # e.g. ASHA's record of the rungs this trial reached, which later decisions compare.
        trial.system_attrs = decision.system_attrs
        session.add(trial)
    if decision.prune:
        prune_job(session, job, attempt, decision.reason)
    return decision.prune
