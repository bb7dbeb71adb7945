"""The study scheduler: fills each running study's free trial slots, asking Optuna's sampler
for the next spec, and ends studies whose trials are all done.

Exactly one API process schedules at a time: the one holding the `study-scheduler` lease
in the database. Everything it decides from is read from the ledger on each pass, so a
scheduler that starts after another died carries on where it stopped; a trial's number is
part of its key, so two schedulers can never store the same trial twice, and a study never
runs more than `max_trials` search trials.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from api.core.dispatch import Dispatcher
from api.core.loops import LeasedLoop
from api.core.models import Study
from api.jobs.ledger import dispatch
from api.studies.ledger import (
    add_infeasible_trial,
    add_trial_job,
    clear_scheduling_failures,
    count_scheduling_failure,
    finish_study,
    save_importances,
)
from api.studies.optuna_bridge import TrialRecord, importances, infeasible_attrs
from api.studies.reads import (
    TrialView,
    active_studies,
    confirmation_tops,
    new_trial_view,
    optuna_records,
    tenant_active_jobs,
)
from api.studies.schemas import TrialState
from api.studies.study_memory import ask, study_trials
from api.web.errors import TooManyJobs
from shared.analysis import Analysis
from shared.checks import SpecRejected
from shared.layers import MAX_INT32
from shared.settings import Settings
from shared.study_checks import admit_trial, constraint_violations, describe_problems, grid_size
from shared.study_spec import StudySpec

log = logging.getLogger(__name__)

LEASE_NAME = "study-scheduler"
# A study on which this many scheduler passes in a row fail ends, failed, with the last
# error: a study that cannot be scheduled must not be retried every second forever.
FAILED_PASSES_TO_END = 3
# Errors of the database itself, not of the study being scheduled: they fail no study.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


@dataclass
class StudyContext:
    """What every step of a pass over one study works with."""

    session: Session
    study: Study
    spec: StudySpec
    dispatcher: Dispatcher
    settings: Settings
    # The base spec as JSON, which every sampled trial's spec starts from.
    base: dict[str, object] = field(init=False)

    def __post_init__(self) -> None:
        self.base = self.spec.base.model_dump(mode="json")


def search_target(spec: StudySpec) -> int:
    """How many search trials the study runs: max_trials, or fewer points of a grid."""
    size = grid_size(spec)
    return spec.max_trials if size is None else min(spec.max_trials, size)


def advance(session: Session, study: Study, dispatcher: Dispatcher, settings: Settings) -> None:
    """One pass over a running study: new trials into free slots, confirmation runs once the
    search is done, importances when more trials finished, and the end when all are done."""
    spec = study.parsed_spec()
    size = grid_size(spec)
    if size is not None and size > settings.max_grid_points:
        # Stored before the limit was set, or under a higher one: the grid is never listed.
        message = (
            f"a grid of {size:,} points; this service runs at most {settings.max_grid_points:,}"
        )
        finish_study(session, study, {"type": "grid_too_large", "message": message})
        return
    context = StudyContext(session, study, spec, dispatcher, settings)
    target = search_target(spec)
    views = study_trials(session, study)
    search = [view for view in views if view.is_search]
    active = sum(view.active for view in views)
    # Counted before the sampler is asked: a study waiting for the tenant's slots costs one
    # count a pass, not a sampling thrown away when its trial cannot be queued.
    free_slots = settings.max_concurrent_jobs - tenant_active_jobs(session, study.tenant_id)
    waiting_for_slots = False
    try:
        while active < spec.max_parallel_trials and len(search) < target:
            if free_slots <= 0:
                waiting_for_slots = True
                break
            view = _next_search_trial(context, search)
            if view is None:
                return  # the study ended, or another scheduler took the number
            active += view.active
            free_slots -= view.active
            search.append(view)
            views.append(view)
        if len(search) >= target and not any(v.active for v in search):
            active += _queue_confirmations(context, views, active)
    except TooManyJobs:
        # The tenant's concurrent-job limit: trials wait for slots, like the tenant's jobs.
        waiting_for_slots = True
    _refresh_importances(session, study, spec, views)
    if not waiting_for_slots and _all_done(spec, views, target):
        if finish_study(session, study, _failure(views)):
            log.info("study %s finished: %s", study.id, study.status)


def _infeasibility(spec: StudySpec, analysis: Analysis) -> tuple[str | None, dict[str, float]]:
    """Why a valid trial spec may not train (None if it may), and how far over each
    constraint it is."""
    violations = constraint_violations(analysis, spec.constraints)
    broken = {name: excess for name, excess in violations.items() if excess > 0}
    if not broken:
        return None, violations
    limits = ", ".join(
        f"{name} ({getattr(spec.constraints, name)}) by {excess:.0%}"
        for name, excess in broken.items()
    )
    return (
        f"breaks {limits}: {analysis.parameters} parameters, "
        f"{analysis.multiply_adds} multiply-adds",
        violations,
    )


def _next_search_trial(context: StudyContext, search: list[TrialView]) -> TrialView | None:
    session, study, spec = context.session, context.study, context.spec
    enqueue = spec.enqueue or []
    # Enqueued configurations are the first search trials, one each, in order.
    enqueued = enqueue[len(search)] if len(search) < len(enqueue) else None
    asked = ask(
        study.id,
        spec,
        study.sampler_state,
        optuna_records(spec, search),
        warm=[TrialRecord.from_json(stored) for stored in study.warm_trials],
        enqueued=enqueued,
    )
    try:
        job_spec, analysis = admit_trial(context.base, asked.params, context.settings)
        reason, violations = _infeasibility(spec, analysis)
    except SpecRejected as rejected:
        # Invalid specs are one more constraint, fully broken, for the sampler to learn from.
        reason = "not a valid job: " + describe_problems(rejected.problems)
        violations = {"valid": 1.0}
    attrs = {**asked.system_attrs, **infeasible_attrs(violations)}
    if reason is not None:
        row = add_infeasible_trial(
            session, study, asked.number, asked.params, reason, attrs, asked.sampler_state
        )
        if row is None:
            return None
        log.info("study %s: trial %d infeasible (%s)", study.id, asked.number, reason)
        return new_trial_view(row)
    stored = add_trial_job(
        session,
        study,
        asked.number,
        asked.params,
        job_spec,
        analysis,
        context.settings.max_concurrent_jobs,
        system_attrs=attrs,
        sampler_state=asked.sampler_state,
    )
    if stored is None:
        return None
    row, job = stored
    dispatch(session, context.dispatcher, job.id)
    return new_trial_view(row, job)


# What a refit run changes of its configuration: it trains on every training image,
# holding none out and taking no subset (`train_subset` is a search's shortcut).
REFIT_CHANGES = {"data.validation": 0, "data.train_subset": None}


def _queue_confirmations(context: StudyContext, views: list[TrialView], active: int) -> int:
    """Re-runs the top configurations with new seeds (refit: on every training image), as
    slots allow; returns how many it queued. The seeds follow the trial's own (see
    `confirmation_seed`)."""
    session, study, spec = context.session, context.study, context.spec
    if spec.confirm is None:
        return 0
    queued = 0
    runs_of = Counter(view.row.confirms for view in views if view.row.confirms is not None)
    next_number = max((view.number for view in views), default=-1) + 1
    changes = REFIT_CHANGES if spec.confirm.refit else {}
    for top in confirmation_tops(spec, views):
        seed = int(top.job.spec["seed"]) if top.job else spec.base.seed
        for run in range(runs_of[top.number], spec.confirm.seeds):
            if active + queued >= spec.max_parallel_trials:
                return queued
            job_spec, analysis = admit_trial(
                context.base,
                {**top.row.params, **changes, "seed": confirmation_seed(seed, run)},
                context.settings,
            )
            stored = add_trial_job(
                session,
                study,
                next_number,
                top.row.params,
                job_spec,
                analysis,
                context.settings.max_concurrent_jobs,
                confirms=top.number,
            )
            if stored is None:
                return queued
            row, job = stored
            dispatch(session, context.dispatcher, job.id)
            views.append(new_trial_view(row, job))
            next_number += 1
            queued += 1
    return queued


def confirmation_seed(seed: int, run: int) -> int:
    """The seed of a trial's confirmation run `run`: the trial's own seed + 1, + 2, ...,
    wrapping round past the largest seed a spec admits (a trial seeded near it would
    otherwise ask for a seed no spec admits, on every pass)."""
    return (seed + run + 1) % (MAX_INT32 + 1)


def _all_done(spec: StudySpec, views: list[TrialView], target: int) -> bool:
    search = [view for view in views if view.is_search]
    if len(search) < target or any(view.active for view in views):
        return False
    if spec.confirm is None:
        return True
    tops = confirmation_tops(spec, views)
    runs = [view.row.confirms for view in views if view.row.confirms is not None]
    return all(runs.count(top.number) >= spec.confirm.seeds for top in tops)


def _failure(views: list[TrialView]) -> dict[str, str] | None:
    if any(view.state == TrialState.succeeded for view in views):
        return None
    tally = ", ".join(
        f"{sum(v.state == state for v in views)} {state.value}"
        for state in TrialState
        if any(v.state == state for v in views)
    )
    return {"type": "no_trial_succeeded", "message": f"no trial succeeded ({tally})"}


def _refresh_importances(
    session: Session, study: Study, spec: StudySpec, views: list[TrialView]
) -> None:
    finished = sum(view.is_search and view.state == TrialState.succeeded for view in views)
    if finished == study.importances_trials:
        return
    found = importances(study.id, spec, optuna_records(spec, views))
    save_importances(session, study, found, finished)


class StudyScheduler(LeasedLoop):
    """Runs `advance` over every running study every `schedule_seconds`, on a daemon thread,
    while this process holds the scheduler lease. `wake()` runs a pass at once (a trial was
    pruned or a study submitted here)."""

    def __init__(self, engine: Engine, dispatcher: Dispatcher, settings: Settings) -> None:
        super().__init__(LEASE_NAME, engine, settings.schedule_seconds, run_at_start=True)
        self.dispatcher, self.settings = dispatcher, settings

    def run_once(self) -> bool:
        """One pass over every running study, if this process holds the lease."""
        with Session(self.engine, expire_on_commit=False) as session:
            if not self.lease.hold(session):
                return False
            for study in active_studies(session):
                if self.stopping:
                    break
                try:
                    advance(session, study, self.dispatcher, self.settings)
                except DATABASE_UNAVAILABLE:
                    session.rollback()
                    log.exception("study %s: scheduling failed on the database", study.id)
                except Exception as error:  # noqa: BLE001 - one broken study must not stop the rest
                    session.rollback()
                    log.exception("study %s: scheduling failed", study.id)
                    _count_failure(session, study, error)
                else:
                    if study.scheduling_failures:
                        clear_scheduling_failures(session, study)
        return True


def _count_failure(session: Session, study: Study, error: Exception) -> None:
    """Counts a failed pass over the study; the last of FAILED_PASSES_TO_END in a row ends it,
    failed, unless it ended otherwise meanwhile (finish_study never overturns a cancel)."""
    failures = count_scheduling_failure(session, study)
    if failures is None or failures < FAILED_PASSES_TO_END:
        return
    message = (
        f"the scheduler failed on this study {failures} times in a row, the last time with "
        f"{type(error).__name__}: {error}"
    )
    if finish_study(session, study, {"type": "scheduling_failed", "message": message[:1000]}):
        log.warning("study %s failed: %s", study.id, message)
