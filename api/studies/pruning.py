"""Each epoch a trial's worker reports is told to its study's pruner; when the pruner says
stop, the job ends `pruned` and the answer to that post tells the worker.

A study of one objective asks Optuna's pruner (median, asha, hyperband). A study of several
asks the pareto pruner here: Optuna refuses `report` and `should_prune` in a study of several
objectives, and has no pruner for one.
"""

from collections.abc import Sequence

from sqlmodel import Session

from api.core.models import Job, Study, StudyStatus
from api.jobs.ledger import prune_job
from api.studies.pareto import Standing, dominator
from api.studies.reads import TrialView, optuna_records, trial_of_job
from api.studies.schemas import TrialState
from api.studies.study_memory import decide_pruning, study_trials
from shared.study_spec import StudySpec


def prune_after_epoch(session: Session, job: Job, attempt: int) -> bool:
    """Asks the pruner about the trial's newest epoch (already recorded, not yet committed);
    prunes the job if it says so. The last epoch is never pruned: the trial is done."""
    study = session.get(Study, job.study_id)
    if study is None:
        return False
    spec = study.parsed_spec()
    if spec.pruner.name == "none" or job.epochs_completed >= job.epochs:
        return False
    if StudyStatus(study.status).finished:
        return False
    session.flush()
    views = study_trials(session, study)
    # Read with the views (the session has it): no query of its own.
    trial = trial_of_job(session, job)
    if trial is None or trial.confirms is not None:
        return False  # confirmation runs always train to the end
    if spec.pruner.name == "pareto":
        reason = pareto_reason(spec, views, trial.number, job.epochs_completed)
        if reason is not None:
            prune_job(session, job, attempt, reason)
        return reason is not None
    records = optuna_records(spec, views)
    decision = decide_pruning(study.id, spec, study.sampler_state, records, trial.number)
    if decision.system_attrs != trial.system_attrs:
        # e.g. ASHA's record of the rungs this trial reached, which later decisions compare.
        trial.system_attrs = decision.system_attrs
        session.add(trial)
    if decision.prune:
        prune_job(session, job, attempt, decision.reason)
    return decision.prune


def _standing(spec: StudySpec, view: TrialView, step: int) -> Standing | None:
    """The trial after `step` epochs, or None when it lacks a value there (it trained fewer
    epochs, or a metric is missing)."""
    static, dynamic = [], []
    for objective in spec.objective_list:
        if objective.static:
            value = view.static_value(objective.metric)
            if value is None:
                return None
            static.append(value)
        else:
            steps = view.intermediate(objective)
            if step not in steps:
                return None
            dynamic.append(steps[step])
    return Standing(view.number, static, dynamic)


def _shown(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) >= 2 else f"{value:.4f}"


def pareto_reason(
    spec: StudySpec, views: Sequence[TrialView], number: int, step: int
) -> str | None:
    """Why the pareto pruner stops trial `number` after `step` epochs, or None if it goes on:
    a succeeded search trial no worse on every static objective was better after `step`
    epochs on the epoch objectives. A trial is never stopped before `n_warmup_epochs`."""
    if step < spec.pruner.n_warmup_epochs:
        return None
    by_number = {view.number: view for view in views}
    trial = by_number.get(number)
    standing = _standing(spec, trial, step) if trial is not None else None
    if standing is None:
        return None
    completed = [
        other
        for view in views
        if view.is_search
        and view.state == TrialState.succeeded
        and view.number != number
        and (other := _standing(spec, view, step)) is not None
    ]
    static = [o for o in spec.objective_list if o.static]
    dynamic = [o for o in spec.objective_list if not o.static]
    better = dominator(standing, completed, static, dynamic)
    if better is None:
        return None
    compared = ", ".join(
        f"{o.metric} {_shown(mine)} against {_shown(theirs)}"
        for o, mine, theirs in zip(dynamic, standing.dynamic, better.dynamic, strict=True)
    )
    smaller = "".join(
        f", {o.metric} {_shown(mine)} against {_shown(theirs)}"
        for o, mine, theirs in zip(static, standing.static, better.static, strict=True)
    )
    return (
        f"stopped by the pareto pruner after {step} epochs: dominated by trial "
        f"{better.number} at the same epoch ({compared}{smaller})"
    )
