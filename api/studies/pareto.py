"""Dominance among the trials of a study of several objectives, decided by Optuna's own
helpers: the front (the study's `pareto`), the ranks `?order=pareto` lists by, and the test
the pareto pruner makes of one trial against another.

Optuna offers the front publicly as `Study.best_trials`, which needs a study holding the
trials; a study resource is read far more often than its sampler is asked, so these call
the vectorised functions behind `best_trials` on the values directly instead of rebuilding
an Optuna study for every read. They are private to Optuna: tests/unit/api/test_pareto.py
checks them against `best_trials` and fails loudly if an upgrade moves them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from optuna.study import StudyDirection
from optuna.study._multi_objective import (
    _dominates,
    _fast_non_domination_rank,
    _is_pareto_front,
)
from optuna.trial import TrialState, create_trial

from shared.study_spec import Objective


def directions(objectives: Sequence[Objective]) -> list[StudyDirection]:
    return [
        StudyDirection.MAXIMIZE if objective.maximize else StudyDirection.MINIMIZE
        for objective in objectives
    ]


def _losses(values: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> np.ndarray:
    # Optuna's convention inside its samplers: every objective minimised.
    signs = [-1.0 if objective.maximize else 1.0 for objective in objectives]
    return np.asarray(values, dtype=float).reshape(len(values), len(objectives)) * signs


def on_front(values: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> list[bool]:
    """For each vector of values, whether no other vector dominates it (equal vectors are
    all on the front, as in `Study.best_trials`)."""
    if not values:
        return []
    return [bool(x) for x in _is_pareto_front(_losses(values, objectives), False)]


def front_ranks(values: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> list[int]:
    """Each vector's non-domination rank: 0 on the front, 1 on the front of the rest, ..."""
    if not values:
        return []
    return [int(rank) for rank in _fast_non_domination_rank(_losses(values, objectives))]


def dominates(
    first: Sequence[float], second: Sequence[float], objectives: Sequence[Objective]
) -> bool:
    """Whether `first` is no worse than `second` on every objective and better on one."""
    if not objectives:
        return False
    trials = [create_trial(state=TrialState.COMPLETE, values=list(v)) for v in (first, second)]
    return _dominates(trials[0], trials[1], directions(objectives))


def no_worse(
    first: Sequence[float], second: Sequence[float], objectives: Sequence[Objective]
) -> bool:
    """Whether `first` is at least as good as `second` on every objective."""
    return list(first) == list(second) or dominates(first, second, objectives)


@dataclass(frozen=True)
class Standing:
    """A trial as the pareto pruner sees it after some epochs: its static objectives' values
    and its epoch objectives' values so far (each reduced as its objective says)."""

    number: int
    static: list[float]
    dynamic: list[float]


def dominator(
    trial: Standing,
    completed: Sequence[Standing],
    static: Sequence[Objective],
    dynamic: Sequence[Objective],
) -> Standing | None:
    """The first completed trial that dominates `trial` at the same epoch: no worse on every
    static objective (a smaller model is never held against a trial), and better on the
    epoch objectives. None when no completed trial does."""
    for other in completed:
        if no_worse(other.static, trial.static, static) and dominates(
            other.dynamic, trial.dynamic, dynamic
        ):
            return other
    return None
