"""A study's warm start: the finished trials of an earlier study of the same tenant and the
same space, told to the new study's sampler before its own (as Optuna's `add_trials` would),
never re-run and never counted against `max_trials`.

They are taken once, when the study is submitted, and kept on its row: every later pass
tells the sampler the same trials, whatever the earlier study does meanwhile. Each is told
by the new study's objectives and constraints, read from the earlier trials' own metrics
and analyses; the pruners judge the study's own trials alone.
"""

from dataclasses import dataclass, replace
from typing import Any

from optuna.trial import TrialState as OptunaState
from sqlmodel import Session

from api.core.models import Study
from api.studies.reads import TrialView, optuna_records, study_trials
from api.studies.schemas import TrialState
from shared.checks import Problem, SpecRejected
from shared.study_checks import constraint_violations
from shared.study_spec import StudySpec

WARM_START_FIELD = ("warm_start", "study_id")
# What a warm start tells: trials with an outcome. Failed and cancelled trials, and those
# still running, have none.
TOLD_STATES = (OptunaState.COMPLETE, OptunaState.PRUNED)


@dataclass(frozen=True)
class JobSize:
    parameters: int
    multiply_adds: int


def warm_start_trials(session: Session, tenant_id: str, spec: StudySpec) -> list[dict[str, Any]]:
    """The earlier study's finished trials as this study's sampler is told them, ready to
    keep on its row; SpecRejected (naming warm_start.study_id) when that study is not the
    tenant's or searches another space."""
    if spec.warm_start is None:
        return []
    source_id = spec.warm_start.study_id
    source = session.get(Study, source_id)
    if source is None or source.tenant_id != tenant_id:
        raise SpecRejected([Problem(WARM_START_FIELD, f"you have no study {source_id}")])
    differing = _differing_dimensions(source.parsed_spec(), spec)
    if differing:
        raise SpecRejected(
            [
                Problem(
                    WARM_START_FIELD,
                    f"study {source_id} searched another space (it differs at "
                    f"{', '.join(differing)}); a warm start needs the same space, dimension "
                    "for dimension",
                )
            ]
        )
    views = [_judged(view, spec) for view in study_trials(session, source, reading=spec)]
    return [
        record.to_json() for record in optuna_records(spec, views) if record.state in TOLD_STATES
    ]


def _differing_dimensions(source: StudySpec, spec: StudySpec, shown: int = 5) -> list[str]:
    """The paths at which the two spaces differ (the first `shown` of them)."""
    theirs = {path: d.model_dump(mode="json") for path, d in source.space.items()}
    ours = {path: d.model_dump(mode="json") for path, d in spec.space.items()}
    differing = sorted(
        path for path in theirs.keys() | ours.keys() if theirs.get(path) != ours.get(path)
    )
    return differing[:shown] + (["..."] if len(differing) > shown else [])


def _judged(view: TrialView, spec: StudySpec) -> TrialView:
    """An earlier trial under this study's constraints: a model the earlier study trained may
    break this one's `max_parameters`, and is then told as this study tells its own
    infeasible trials (the worst values seen), never as a result to steer towards."""
    if view.job is None or view.state not in (TrialState.succeeded, TrialState.pruned):
        return view
    analysis = view.job.analysis
    size = JobSize(int(analysis.get("parameters", 0)), int(analysis.get("multiply_adds", 0)))
    if any(excess > 0 for excess in constraint_violations(size, spec.constraints).values()):
        return replace(view, state=TrialState.infeasible)
    return view
