"""What is known of a study's trials, read from the ledger: each trial's state (its job's
status), its objective values and per-epoch values, its leaderboard row, the front of a
study of several objectives, and the study resource. A study costs three queries (trials,
their jobs, their metrics) however many trials it has; a page of studies costs the same
three plus one."""

import statistics
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from optuna.trial import TrialState as OptunaState
from sqlalchemy import and_, or_
from sqlmodel import Session, col, func, select

from api.core.models import EpochMetricRow, Job, JobStatus, Study, StudyStatus, TrialRow, as_utc
from api.jobs.reads import newest_first
from api.studies.optuna_bridge import TrialRecord, penalty
from api.studies.pareto import front_ranks, on_front
from api.studies.schemas import (
    ACTIVE_TRIAL_STATES,
    BestTrial,
    ConfirmedConfiguration,
    ParetoTrial,
    StudyList,
    StudyPublic,
    TrialCounts,
    TrialList,
    TrialPublic,
    TrialState,
)
from shared.messages import JobError
from shared.study_spec import Objective, StudySpec

OPTUNA_STATES = {
    TrialState.queued: OptunaState.RUNNING,
    TrialState.running: OptunaState.RUNNING,
    TrialState.succeeded: OptunaState.COMPLETE,
    TrialState.pruned: OptunaState.PRUNED,
    TrialState.failed: OptunaState.FAIL,
    TrialState.cancelled: OptunaState.FAIL,
    # Told as finished with a penalty and its constraint violations: see optuna_bridge.
    TrialState.infeasible: OptunaState.COMPLETE,
}


@dataclass
class TrialView:
    row: TrialRow
    state: TrialState
    job: Job | None
    # Each epoch metric the study's objectives read, by epoch, as the job reported it. An
    # epoch without it (a validation metric of a job that held nothing out) is left out.
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.row.number

    @property
    def is_search(self) -> bool:
        return self.row.confirms is None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_TRIAL_STATES

    def static_value(self, metric: str) -> float | None:
        """A count the analysis gave when the trial's job was admitted (none when it never
        became a job)."""
        if self.job is None or not isinstance(self.job.analysis.get(metric), int | float):
            return None
        return float(self.job.analysis[metric])

    def value(self, objective: Objective) -> float | None:
        """The objective: the best epoch's metric, or the last epoch's; a static one's count."""
        if objective.static:
            return self.static_value(objective.metric)
        by_epoch = self.metrics.get(objective.metric)
        if not by_epoch:
            return None
        if objective.reduce == "last":
            return by_epoch[max(by_epoch)]
        values = by_epoch.values()
        return max(values) if objective.maximize else min(values)

    def values(self, objectives: Sequence[Objective]) -> list[float] | None:
        """One value per objective, or None until every one of them has a value."""
        found = [self.value(objective) for objective in objectives]
        return None if None in found else [value for value in found if value is not None]

    def intermediate(self, objective: Objective) -> dict[int, float]:
        """The objective after each epoch, by epochs completed: the metric so far at its
        best (reduce best) or as it was that epoch (reduce last)."""
        steps: dict[int, float] = {}
        best: float | None = None
        by_epoch = self.metrics.get(objective.metric, {})
        for epoch in sorted(by_epoch):
            value = by_epoch[epoch]
            if objective.reduce == "best" and best is not None:
                value = max(best, value) if objective.maximize else min(best, value)
            best = value
            steps[epoch + 1] = value
        return steps

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy of the epoch of best validation accuracy (the job's best epoch),
        reported beside what the study chose on; None when the job validated on nothing."""
        if self.job is None or self.job.best_val_accuracy is None:
            return None
        return self.job.best_test_accuracy


def epoch_metrics(spec: StudySpec) -> list[str]:
    """The metrics rows' columns the study's objectives read."""
    return [goal.metric for goal in spec.objective_list if not goal.static]


def read_metrics(spec: StudySpec) -> list[str]:
    """The metrics rows' columns a study's trials are read with: its objectives', and the
    test accuracy its refit confirmation runs report."""
    columns = epoch_metrics(spec)
    if spec.confirm is not None and spec.confirm.refit and "test_accuracy" not in columns:
        columns.append("test_accuracy")
    return columns


def take_metrics(
    metrics: dict[str, dict[int, float]], row: EpochMetricRow, columns: Sequence[str]
) -> None:
    """Adds a metrics row's values of `columns` to `metrics` (by column, then epoch); a
    validation metric of a job that held nothing out is None, and left out."""
    for column in columns:
        value = getattr(row, column)
        if value is not None:
            metrics.setdefault(column, {})[row.epoch] = float(value)


def _state(row: TrialRow, job: Job | None) -> TrialState:
    if row.job_id is None or job is None:
        return TrialState.infeasible
    return TrialState(job.status)


def new_trial_view(row: TrialRow, job: Job | None = None) -> TrialView:
    """A trial just stored: queued with its job, or infeasible without one; no epochs yet."""
    return TrialView(row, _state(row, job), job)


def trial_views(
    session: Session, studies: Sequence[Study], reading: StudySpec | None = None
) -> dict[str, list[TrialView]]:
    """Every trial of `studies`, by study id, in trial order, with the metrics each study's
    spec reads (or those `reading` does: a warm start reads another study's trials by the
    objectives of the study it starts)."""
    ids = [study.id for study in studies]
    columns = {study.id: read_metrics(reading or study.parsed_spec()) for study in studies}
    views: dict[str, list[TrialView]] = {study_id: [] for study_id in ids}
    if not ids:
        return views
    rows = list(
        session.exec(
            select(TrialRow)
            .where(col(TrialRow.study_id).in_(ids))
            .order_by(col(TrialRow.study_id), col(TrialRow.number))
        )
    )
    jobs = {job.id: job for job in session.exec(select(Job).where(col(Job.study_id).in_(ids)))}
    metrics: dict[str, dict[str, dict[int, float]]] = defaultdict(dict)
    if jobs:
        for metric_row in session.exec(
            select(EpochMetricRow).where(col(EpochMetricRow.job_id).in_(list(jobs)))
        ):
            study_id = jobs[metric_row.job_id].study_id or ""
            take_metrics(metrics[metric_row.job_id], metric_row, columns[study_id])
    for row in rows:
        job = jobs.get(row.job_id) if row.job_id else None
        views[row.study_id].append(
            TrialView(row, _state(row, job), job, metrics.get(row.job_id or "", {}))
        )
    return views


def study_trials(
    session: Session, study: Study, reading: StudySpec | None = None
) -> list[TrialView]:
    return trial_views(session, [study], reading)[study.id]


def numbered_trials(session: Session, study: Study, numbers: Collection[int]) -> list[TrialView]:
    """The study's trials numbered `numbers`, in trial order, as study_trials reads them (in
    one query): what a reader that keeps the trials that can no longer change has yet to read."""
    if not numbers:
        return []
    columns = read_metrics(study.parsed_spec())
    found = session.exec(
        select(TrialRow, Job, EpochMetricRow)
        .outerjoin(Job, col(Job.id) == col(TrialRow.job_id))
        .outerjoin(EpochMetricRow, col(EpochMetricRow.job_id) == col(Job.id))
        .where(TrialRow.study_id == study.id, col(TrialRow.number).in_(list(numbers)))
        .order_by(col(TrialRow.number), col(EpochMetricRow.epoch))
    )
    views: dict[int, TrialView] = {}
    for row, job, metric_row in found:
        view = views.get(row.number)
        if view is None:
            view = views[row.number] = TrialView(row, _state(row, job), job)
        if metric_row is not None:
            take_metrics(view.metrics, metric_row, columns)
    return list(views.values())


def unsettled_trials(
    session: Session, study_id: str, settled: Collection[int]
) -> list[tuple[TrialRow, Job | None]]:
    """The study's trials but those numbered in `settled` (ended, and already told), with
    their jobs, in trial order: what an event stream has yet to look at."""
    query = select(TrialRow).where(TrialRow.study_id == study_id)
    if settled:
        query = query.where(col(TrialRow.number).not_in(list(settled)))
    rows = list(session.exec(query.order_by(col(TrialRow.number))))
    job_ids = [row.job_id for row in rows if row.job_id]
    jobs = {}
    if job_ids:
        jobs = {job.id: job for job in session.exec(select(Job).where(col(Job.id).in_(job_ids)))}
    return [(row, jobs.get(row.job_id) if row.job_id else None) for row in rows]


def metrics_after(session: Session, last_epochs: Mapping[str, int]) -> list[EpochMetricRow]:
    """The rows of these jobs after the last epoch a reader has of each, by job and epoch.
    A row is written once per job and epoch (a resumed attempt's repeat of an epoch changes
    nothing), so these are all a reader has not seen."""
    if not last_epochs:
        return []
    unread = [
        and_(col(EpochMetricRow.job_id) == job_id, col(EpochMetricRow.epoch) > epoch)
        for job_id, epoch in last_epochs.items()
    ]
    return list(
        session.exec(
            select(EpochMetricRow)
            .where(or_(*unread))
            .order_by(col(EpochMetricRow.job_id), col(EpochMetricRow.epoch))
        )
    )


def optuna_records(spec: StudySpec, views: Sequence[TrialView]) -> list[TrialRecord]:
    """The search trials as Optuna's samplers and pruners are told them."""
    if spec.multi_objective:
        return _multi_objective_records(spec, views)
    search = [view for view in views if view.is_search]
    finished = [
        value
        for view in search
        if view.state == TrialState.succeeded and (value := view.value(spec.objective)) is not None
    ]
    records = []
    for view in search:
        value = view.value(spec.objective)
        if view.state == TrialState.infeasible:
            value = penalty(spec.objective, finished)
        records.append(
            TrialRecord(
                number=view.number,
                state=OPTUNA_STATES[view.state],
                params=view.row.params,
                value=value,
                intermediate=view.intermediate(spec.objective),
                system_attrs=view.row.system_attrs,
                succeeded=view.state == TrialState.succeeded,
            )
        )
    return records


def _multi_objective_records(spec: StudySpec, views: Sequence[TrialView]) -> list[TrialRecord]:
    """The search trials of a study of several objectives, as its samplers are told them.

    A pruned trial is told as a complete one, with its values at the epoch it stopped (its
    static objectives' counts, its epoch objectives so far). Optuna's multi-objective
    samplers learn from complete trials and stumble on pruned ones, which carry no values
    there: TPE ranks a pruned trial by its last intermediate value under `study.direction`,
    which a study of several directions refuses (optuna#5260), and NSGA-II fills its
    generations with complete trials alone, so a study whose trials are mostly pruned would
    stay in its first, random generation (optuna#2853). Told as complete, a pruned trial is
    a point the sampler learns from, and a pessimistic one (it was stopped for being
    dominated, on its way up), which steers the sampler away from it as the pruner meant
    to. A pruned trial without a value of every objective is told as failed: samplers skip
    it.

    An infeasible trial is told as complete with its constraint violations, as in a study of
    one objective: TPE and NSGA-II rank it below every feasible trial by those, and its
    values (the worst seen of each objective) never reach a front. Random, grid and QMC
    sampling read neither.

    Only succeeded trials make the front (pareto_trials); what is told here is for sampling
    alone."""
    goals = spec.objective_list
    search = [view for view in views if view.is_search]
    finished = [
        values
        for view in search
        if view.state == TrialState.succeeded and (values := view.values(goals)) is not None
    ]
    worst = [
        penalty(goal, [values[index] for values in finished]) for index, goal in enumerate(goals)
    ]
    records = []
    for view in search:
        state = OPTUNA_STATES[view.state]
        values = view.values(goals)
        if view.state == TrialState.pruned:
            state = OptunaState.COMPLETE if values is not None else OptunaState.FAIL
        elif view.state == TrialState.infeasible:
            values = worst
        records.append(
            TrialRecord(
                number=view.number,
                state=state,
                params=view.row.params,
                values=values,
                system_attrs=view.row.system_attrs,
                succeeded=view.state == TrialState.succeeded,
            )
        )
    return records


def trial_public(view: TrialView, spec: StudySpec, pareto_rank: int | None = None) -> TrialPublic:
    reason = view.row.reason
    if view.job is not None:
        if view.job.pruned_reason:
            reason = view.job.pruned_reason
        elif view.job.error:
            reason = str(view.job.error.get("message", ""))
    goals = spec.objective_list
    return TrialPublic(
        number=view.number,
        state=view.state,
        params=view.row.params,
        value=None if spec.multi_objective else view.value(spec.objective),
        values=view.values(goals),
        test_accuracy=view.test_accuracy,
        pareto_rank=pareto_rank,
        epochs_completed=view.job.epochs_completed if view.job else 0,
        job_id=view.row.job_id,
        reason=reason,
        confirms=view.row.confirms,
        seed=int(view.job.spec.get("seed", 0)) if view.job else None,
        started_at=as_utc(view.job.started_at) if view.job else None,
        finished_at=as_utc(view.job.finished_at) if view.job else as_utc(view.row.created_at),
    )


def _front_candidates(
    spec: StudySpec, views: Sequence[TrialView]
) -> list[tuple[TrialView, list[float]]]:
    """The trials a front is made of: the search trials that succeeded with a value of every
    objective (a pruned trial's values are those of an unfinished run; a confirmation run
    repeats a trial)."""
    goals = spec.objective_list
    return [
        (view, values)
        for view in views
        if view.is_search
        and view.state == TrialState.succeeded
        and (values := view.values(goals)) is not None
    ]


def pareto_ranks(spec: StudySpec, views: Sequence[TrialView]) -> dict[int, int]:
    """Each front candidate's non-domination rank (0: on the front), by trial number."""
    candidates = _front_candidates(spec, views)
    ranks = front_ranks([values for _, values in candidates], spec.objective_list)
    return {view.number: rank for (view, _), rank in zip(candidates, ranks, strict=True)}


def _best_first(
    spec: StudySpec, values: Sequence[float] | None, number: int
) -> tuple[bool, float, int]:
    """A sort key: by the first objective, best first, then by number; no values last."""
    if values is None:
        return (True, 0.0, number)
    sign = -1 if spec.objective_list[0].maximize else 1
    return (False, sign * values[0], number)


def pareto_trials(spec: StudySpec, views: Sequence[TrialView]) -> list[ParetoTrial]:
    """The non-dominated search trials, by the first objective, best first."""
    candidates = _front_candidates(spec, views)
    front = on_front([values for _, values in candidates], spec.objective_list)
    trials = [
        ParetoTrial(
            number=view.number,
            job_id=view.row.job_id or "",
            params=view.row.params,
            values=values,
            test_accuracy=view.test_accuracy,
        )
        for (view, values), kept in zip(candidates, front, strict=True)
        if kept
    ]
    return sorted(trials, key=lambda t: _best_first(spec, t.values, t.number))


def leaderboard(study: Study, views: Sequence[TrialView], order: str = "number") -> TrialList:
    spec = study.parsed_spec()
    ranks = pareto_ranks(spec, views) if spec.multi_objective else {}
    items = [trial_public(view, spec, ranks.get(view.number)) for view in views]
    if order == "value" or (order == "pareto" and not spec.multi_objective):
        # Best first (by the first objective); trials without a value yet come last, in
        # number order. A study of one objective has a front of its best trial.
        items.sort(key=lambda t: _best_first(spec, t.values, t.number))
    elif order == "pareto":
        # The front first, then each front of what is left; within one, by the first
        # objective. Trials on no front (unfinished, pruned, infeasible, confirmation runs)
        # come after, in number order.
        items.sort(
            key=lambda t: (
                t.pareto_rank is None,
                t.pareto_rank or 0,
                *_best_first(spec, t.values if t.pareto_rank is not None else None, t.number),
            )
        )
    return TrialList(study_id=study.id, items=items)


def ranked_search_trials(spec: StudySpec, views: Sequence[TrialView]) -> list[TrialView]:
    """The succeeded search trials, best first by the (first) objective (ties: the earlier
    trial)."""
    sign = -1 if spec.objective.maximize else 1
    done = [
        v
        for v in views
        if v.is_search and v.state == TrialState.succeeded and v.value(spec.objective) is not None
    ]
    return sorted(done, key=lambda v: (sign * (v.value(spec.objective) or 0.0), v.number))


def confirmation_tops(spec: StudySpec, views: Sequence[TrialView]) -> list[TrialView]:
    """The search trials whose configurations `confirm` runs again: the `top_k` best by
    validation (for several objectives, of the front, by the first objective), in that
    order. Chosen on what the search measured, never on test."""
    if spec.confirm is None:
        return []
    if spec.multi_objective:
        by_number = {view.number: view for view in views}
        tops = [by_number[trial.number] for trial in pareto_trials(spec, views)]
    else:
        tops = ranked_search_trials(spec, views)
    return tops[: spec.confirm.top_k]


# A refit run's test accuracy over its last epochs: what the assignment holds a model to.
LAST_EPOCHS = 3


def confirmed(spec: StudySpec, views: Sequence[TrialView]) -> list[ConfirmedConfiguration] | None:
    if spec.confirm is None:
        return None
    confirmations: dict[int, list[TrialView]] = defaultdict(list)
    for view in views:
        if view.row.confirms is not None:
            confirmations[view.row.confirms].append(view)
    if not confirmations:
        return []
    tops = confirmation_tops(spec, views)
    if spec.confirm.refit:
        # In the order they were chosen: ranking them by test would choose on test.
        return [_refit(top, confirmations.get(top.number, [])) for top in tops]
    configurations = []
    for top in tops:
        runs = [top, *confirmations.get(top.number, [])]
        done = [
            (run, value)
            for run in runs
            if run.state == TrialState.succeeded
            and (value := run.value(spec.objective)) is not None
        ]
        values = [value for _, value in done]
        configurations.append(
            ConfirmedConfiguration(
                trial=top.number,
                params=top.row.params,
                parameters=_parameters(top),
                mean=statistics.fmean(values) if values else None,
                std=statistics.stdev(values) if len(values) > 1 else 0.0,
                n=len(values),
                values=values,
                job_ids=[run.row.job_id for run, _ in done if run.row.job_id],
            )
        )
    sign = -1 if spec.objective.maximize else 1
    return sorted(
        configurations,
        key=lambda c: (c.mean is None, sign * (c.mean or 0.0), c.trial),
    )


def _parameters(view: TrialView) -> int | None:
    count = view.static_value("parameters")
    return None if count is None else int(count)


def _refit(top: TrialView, runs: Sequence[TrialView]) -> ConfirmedConfiguration:
    """A configuration trained again on every training image: its runs' test accuracy, the
    last epoch's of each, and the lowest of their last LAST_EPOCHS epochs."""
    done = [
        (run, by_epoch)
        for run in runs
        if run.state == TrialState.succeeded and (by_epoch := run.metrics.get("test_accuracy"))
    ]
    finals = [by_epoch[max(by_epoch)] for _, by_epoch in done]
    lasts = [by_epoch[epoch] for _, by_epoch in done for epoch in sorted(by_epoch)[-LAST_EPOCHS:]]
    return ConfirmedConfiguration(
        trial=top.number,
        params=top.row.params,
        parameters=_parameters(top),
        n=len(done),
        test_mean=statistics.fmean(finals) if finals else None,
        test_std=statistics.stdev(finals) if len(finals) > 1 else (0.0 if finals else None),
        test_min_last3=min(lasts) if lasts else None,
        test_values=finals,
        job_ids=[run.row.job_id for run, _ in done if run.row.job_id],
    )


def counts(views: Sequence[TrialView]) -> TrialCounts:
    tally: dict[str, int] = defaultdict(int)
    for view in views:
        tally[view.state.value] += 1
    return TrialCounts(total=len(views), **tally)


def study_public(study: Study, views: Sequence[TrialView]) -> StudyPublic:
    spec = study.parsed_spec()
    best = pareto = None
    if spec.multi_objective:
        pareto = pareto_trials(spec, views)
    else:
        ranked = ranked_search_trials(spec, views)
        if ranked and (value := ranked[0].value(spec.objective)) is not None and ranked[0].job:
            best = BestTrial(
                trial=ranked[0].number,
                job_id=ranked[0].job.id,
                params=ranked[0].row.params,
                value=value,
                test_accuracy=ranked[0].test_accuracy,
            )
    return StudyPublic(
        id=study.id,
        name=study.name,
        status=StudyStatus(study.status),
        spec=study.spec,
        created_at=as_utc(study.created_at),
        finished_at=as_utc(study.finished_at),
        trials=counts(views),
        best=best,
        pareto=pareto,
        importances=study.importances,
        confirmed=confirmed(spec, views),
        warm_trials=len(study.warm_trials),
        error=JobError.model_validate(study.error) if study.error else None,
    )


def study_view(session: Session, study: Study) -> StudyPublic:
    return study_public(study, study_trials(session, study))


def studies_page(
    session: Session,
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    status: StudyStatus | None = None,
) -> StudyList:
    page, next_cursor = newest_first(session, Study, tenant_id, limit, cursor, status)
    views = trial_views(session, page)
    return StudyList(
        items=[study_public(study, views[study.id]) for study in page], next_cursor=next_cursor
    )


def active_studies(session: Session) -> list[Study]:
    """Studies the scheduler still has work for, oldest first."""
    return list(
        session.exec(
            select(Study)
            .where(col(Study.status).in_([StudyStatus.queued, StudyStatus.running]))
            .order_by(col(Study.id))
        )
    )


def tenant_active_jobs(session: Session, tenant_id: str) -> int:
    """The tenant's queued and running jobs, trials and others: what its concurrent-job
    limit counts."""
    return session.exec(
        select(func.count())
        .select_from(Job)
        .where(
            Job.tenant_id == tenant_id, col(Job.status).in_([JobStatus.queued, JobStatus.running])
        )
    ).one()


def active_trial_jobs(session: Session, study_id: str) -> list[Job]:
    """The study's queued and running trial jobs."""
    return list(
        session.exec(
            select(Job).where(
                Job.study_id == study_id,
                col(Job.status).in_([JobStatus.queued, JobStatus.running]),
            )
        )
    )


def trial_of_job(session: Session, job: Job) -> TrialRow | None:
    if job.study_id is None or job.trial is None:
        return None
    return session.get(TrialRow, (job.study_id, job.trial))
