"""`tunelab study export`: a Tunelab study written as an Optuna storage file: Optuna's own
journal file format (`JournalStorage` over a `JournalFileBackend`), which `optuna-dashboard
FILE.db` opens as it is (given a plain file, the dashboard reads it as a journal; an SQLite
file it would refuse without a `sqlite:///` URL), and from which `optuna.load_study` with a
`JournalStorage` and `optuna.visualization` read the study.

What the file holds:

- one Optuna study, named as the Tunelab study is (its id when it has no name), with the
  objective's direction, the metric's name (`set_metric_names`) and, as user attrs, the
  Tunelab study id, status and objective; a study of several objectives is an Optuna study
  of several directions, one metric name each (the dashboard draws its Pareto front);
- one Optuna trial per Tunelab trial, in number order, so Optuna's numbers are Tunelab's.
  Params and distributions come from the study's `spec.space`; a categorical choice is held as
  `shared.study_spec.encode_choice` encodes it (JSON text for objects and lists), exactly as
  the API's samplers saw it;
- states: succeeded is COMPLETE with the trial's value; pruned is PRUNED with its last
  epoch's value (Optuna's own rule for a pruned trial); failed, cancelled and infeasible are
  FAIL; queued is WAITING and running is RUNNING (a snapshot of a study still going: keeping
  them keeps the numbers equal, and Optuna's plots leave unfinished trials out);
- intermediate values: the objective's metric at each epoch, at step epoch + 1 (epochs
  completed, the steps of api/studies/optuna_bridge.py), from the job's metrics. For `reduce: best`
  the API's pruner is told the best value so far; the file holds the metric itself, the
  learning curve a user expects in the dashboard. An epoch without the metric (validation
  of a job that held nothing out) has none;
- several objectives: a succeeded trial is COMPLETE with its `values`; a pruned one is PRUNED
  without values and without intermediate values, as Optuna keeps a pruned trial of such a
  study (its values when it stopped are the user attr `values_at_stop`);
- user attrs on each trial: `tunelab_trial` (its number), `job_id`, `state` (Tunelab's),
  `reason`, `confirms` and `seed`.

Confirmation runs (`confirm` in the study) are exported as extra trials after the search
trials, each with the `confirms` user attr naming the search trial whose configuration it
re-runs with another seed; a search trial has `confirms` None.

Each trial starts and ends when its job did (an infeasible one when it was sampled), so the
dashboard's timeline is the study's own; a trial still queued keeps the export's time.
"""

import os
import secrets
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import TypeAdapter

from api.studies.optuna_bridge import optuna_distribution
from shared.study_spec import CategoricalDistribution, Distribution, Objective, encode_choice

STATES = {
    "succeeded": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
    "cancelled": TrialState.FAIL,
    "infeasible": TrialState.FAIL,
    "queued": TrialState.WAITING,
    "running": TrialState.RUNNING,
}

_DISTRIBUTION = TypeAdapter(Distribution)


def journal_storage(path: Path) -> JournalStorage:
    """The Optuna storage of an exported file, to write it or to read it back."""
    return JournalStorage(JournalFileBackend(str(path)))


def study_name(study: Mapping[str, Any]) -> str:
    return str(study.get("name") or study["id"])


def intermediate_values(metric: str, rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """The metric by epochs completed: epoch 0's value at step 1; epochs without it left out."""
    return {
        int(row["epoch"]) + 1: float(row[metric]) for row in rows if row.get(metric) is not None
    }


def objectives_of(spec: Mapping[str, Any]) -> list[Objective]:
    """The study's objectives: `objectives`, or `objective` alone."""
    return [
        Objective.model_validate(objective)
        for objective in spec.get("objectives") or [spec.get("objective", {})]
    ]


def optuna_trial(
    space: Mapping[str, Distribution],
    metric: str,
    trial: Mapping[str, Any],
    metric_rows: Sequence[Mapping[str, Any]],
    objectives: int = 1,
) -> FrozenTrial:
    """One Tunelab trial (a row of GET /v1/studies/{id}/trials) as an Optuna trial of a study
    of `objectives` objectives (`metric` is the first)."""
    params = {
        path: encode_choice(value) if isinstance(space[path], CategoricalDistribution) else value
        for path, value in trial["params"].items()
    }
    distributions: dict[str, BaseDistribution] = {
        path: optuna_distribution(space[path]) for path in params
    }
    state = STATES[trial["state"]]
    user_attrs = {
        "tunelab_trial": trial["number"],
        "job_id": trial.get("job_id"),
        "state": trial["state"],
        "reason": trial.get("reason"),
        "confirms": trial.get("confirms"),
        "seed": trial.get("seed"),
    }
    if objectives > 1:
        values = trial.get("values")
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL  # succeeded without a value of every objective
        if state == TrialState.PRUNED:
            user_attrs["values_at_stop"] = values
        frozen = create_trial(
            state=state,
            values=values if state == TrialState.COMPLETE else None,
            params=params,
            distributions=distributions,
            user_attrs=user_attrs,
        )
        _keep_times(frozen, trial)
        return frozen
    intermediate = intermediate_values(metric, metric_rows)
    value = trial.get("value")
    if state == TrialState.PRUNED and intermediate:
        value = intermediate[max(intermediate)]
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL  # succeeded without a single epoch's metric: nothing to rank
    frozen = create_trial(
        state=state,
        value=value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        params=params,
        distributions=distributions,
        intermediate_values=intermediate,
        user_attrs=user_attrs,
    )
    _keep_times(frozen, trial)
    return frozen


def _keep_times(frozen: FrozenTrial, trial: Mapping[str, Any]) -> None:
    """The trial's own start and end (its job's), so the dashboard's timeline is real; Optuna's
    "now" stays where the API knows no time."""
    started, finished = _moment(trial.get("started_at")), _moment(trial.get("finished_at"))
    if started is not None:
        frozen.datetime_start = started
    elif finished is not None:
        frozen.datetime_start = finished  # never trained (infeasible): sampled and ended at once
    if frozen.state.is_finished() and finished is not None:
        frozen.datetime_complete = max(finished, frozen.datetime_start or finished)


def _moment(text: Any) -> datetime | None:
    # Optuna keeps naive local datetimes; the API's are RFC 3339 UTC.
    if not text:
        return None
    return datetime.fromisoformat(str(text)).astimezone().replace(tzinfo=None)


def write_study(
    path: Path,
    study: Mapping[str, Any],
    trials: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    overwrite: bool = False,
) -> int:
    """Writes `study` (GET /v1/studies/{id}) with its `trials` (GET …/trials) and each trial's
    job's `metrics` rows (GET /v1/jobs/{job_id}/metrics, by job id) to the journal file `path`;
    the number of trials written. The file appears whole or not at all; an existing one is
    replaced only with `overwrite`, otherwise FileExistsError."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists")
    spec = study["spec"]
    space = {key: _DISTRIBUTION.validate_python(value) for key, value in spec["space"].items()}
    objectives = objectives_of(spec)
    frozen = [
        optuna_trial(
            space,
            objectives[0].metric,
            trial,
            metrics.get(trial.get("job_id") or "", []),
            len(objectives),
        )
        for trial in sorted(trials, key=lambda t: int(t["number"]))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it, then renamed: a failed export leaves no half-written study behind.
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        _write(partial, study, objectives, frozen)
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} exists")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return len(frozen)


def _write(
    path: Path,
    study: Mapping[str, Any],
    objectives: Sequence[Objective],
    trials: Sequence[FrozenTrial],
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exported = optuna.create_study(
        storage=journal_storage(path),
        study_name=study_name(study),
        directions=[objective.direction or "maximize" for objective in objectives],
    )
    with warnings.catch_warnings():
        # Experimental in Optuna since 3.2, and what the dashboard's axes are named by.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        exported.set_metric_names([objective.metric for objective in objectives])
    exported.set_user_attr("tunelab_study_id", study["id"])
    exported.set_user_attr("tunelab_status", study.get("status"))
    exported.set_user_attr("objective", objectives[0].model_dump(mode="json"))
    if len(objectives) > 1:
        exported.set_user_attr(
            "objectives", [objective.model_dump(mode="json") for objective in objectives]
        )
    for trial in trials:
        exported.add_trial(trial)
