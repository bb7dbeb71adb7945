"""Every sampler of a study of several objectives, asked again and again over a history that
holds pruned, infeasible, failed and running trials: no error, and parameters from the space
each time. Optuna's multi-objective samplers have tripped over pruned trials (optuna#5260 for
TPE, #2853 for NSGA-II); reads.optuna_records tells them a pruned trial as a complete one at
the values it stopped with, and an infeasible one with its constraint violations."""

import math
from itertools import cycle
from typing import Any

import pytest
from optuna.trial import TrialState as OptunaState

from api.studies.optuna_bridge import ask
from api.studies.reads import TrialView, optuna_records
from api.studies.schemas import TrialState
from shared.study_spec import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    StudySpec,
)
from tests.unit.api.trial_histories import STUDY_ID, infeasible, multi_spec, view

FLOAT_SPACE = {
    "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
    "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 16, "step": 4},
}
# A grid needs every dimension categorical or int: 3 x 4 points.
GRID_SPACE = {
    "optimizer.lr": {"type": "categorical", "choices": [0.001, 0.01, 0.1]},
    "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 16, "step": 4},
}
SAMPLERS = {
    "tpe": ({"name": "tpe", "seed": 3, "n_startup_trials": 2}, FLOAT_SPACE),
    # Generations of 4: the history fills several, pruned trials included.
    "nsga2": ({"name": "nsga2", "seed": 3, "population_size": 4}, FLOAT_SPACE),
    "random": ({"name": "random", "seed": 3}, FLOAT_SPACE),
    "grid": ({"name": "grid", "seed": 3}, GRID_SPACE),
    "qmc": ({"name": "qmc", "seed": 3}, FLOAT_SPACE),
}
ASKS = 12
# How each asked trial ends, in turn.
OUTCOMES = ["succeeded", "pruned", "infeasible", "succeeded", "pruned", "failed", "running"]


def accuracy(params: dict[str, Any]) -> float:
    """Best near lr 0.03; wider first layers a little better."""
    distance = abs(math.log10(params["optimizer.lr"]) - math.log10(0.03))
    return round(max(0.1, 0.95 - 0.2 * distance) + params["model.layers[0].out_channels"] / 400, 4)


def ended(number: int, outcome: str, params: dict[str, Any], attrs: dict[str, Any]) -> TrialView:
    width = params["model.layers[0].out_channels"]
    final = accuracy(params)
    curves = {
        "succeeded": [final - 0.2, final - 0.05, final - 0.01, final],
        # Stopped after two epochs, well below where it was heading.
        "pruned": [final - 0.3, final - 0.25],
        "failed": [final - 0.3],
        "running": [final - 0.3],
    }
    if outcome == "infeasible":
        return infeasible(number, params, attrs)
    return view(
        number,
        TrialState(outcome),
        params,
        val_accuracy=curves[outcome],
        parameters=600 * width,
        system_attrs=attrs,
    )


def in_space(spec: StudySpec, params: dict[str, Any]) -> bool:
    assert set(params) == set(spec.space)
    for path, value in params.items():
        distribution = spec.space[path]
        if isinstance(distribution, CategoricalDistribution):
            if value not in distribution.choices:
                return False
        elif isinstance(distribution, IntDistribution):
            if not isinstance(value, int) or (value - distribution.low) % distribution.step:
                return False
            if not distribution.low <= value <= distribution.high:
                return False
        else:
            assert isinstance(distribution, FloatDistribution)
            if not distribution.low <= value <= distribution.high:
                return False
    return True


def history(spec: StudySpec, asks: int = ASKS) -> list[TrialView]:
    """Asks the sampler `asks` times as the scheduler does (each time told every trial so
    far, the sampler's state carried on), ending each trial by OUTCOMES in turn."""
    views: list[TrialView] = []
    state: dict[str, Any] = {}
    for number, outcome in zip(range(asks), cycle(OUTCOMES), strict=False):
        asked = ask(STUDY_ID, spec, state, optuna_records(spec, views))
        assert asked.number == number
        assert in_space(spec, asked.params), asked.params
        state = asked.sampler_state
        views.append(ended(number, outcome, asked.params, asked.system_attrs))
    return views


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_sampler_of_several_objectives_asks_on_over_pruned_and_infeasible_trials(name):
    sampler, space = SAMPLERS[name]
    spec = multi_spec(sampler=sampler, space=space)
    views = history(spec)
    assert {v.state for v in views} >= {TrialState.pruned, TrialState.infeasible}
    records = {r.number: r for r in optuna_records(spec, views)}
    pruned = [v for v in views if v.state == TrialState.pruned]
    for trial in pruned:
        # Told as complete, at the values it stopped with: its own parameters, its
        # validation accuracy after its last epoch.
        record = records[trial.number]
        assert record.state == OptunaState.COMPLETE
        assert record.values == [
            trial.metrics["val_accuracy"][1],
            trial.job.analysis["parameters"] if trial.job else None,
        ]
    for trial in (v for v in views if v.state == TrialState.infeasible):
        assert records[trial.number].state == OptunaState.COMPLETE
        assert records[trial.number].system_attrs["constraints:max_parameters"] > 0


def test_the_same_seed_asks_the_same_trials(name="nsga2"):
    sampler, space = SAMPLERS[name]
    spec = multi_spec(sampler=sampler, space=space)
    first, second = history(spec), history(spec)
    assert [v.row.params for v in first] == [v.row.params for v in second]


def test_nsga2_leaves_its_first_generation_though_half_its_trials_were_pruned():
    # Optuna's NSGA-II fills a generation with complete trials only: told as pruned, these
    # would keep it sampling at random in generation 0 (optuna#2853).
    sampler, space = SAMPLERS["nsga2"]
    spec = multi_spec(sampler=sampler, space=space)
    views = history(spec, asks=16)
    generations = [
        value
        for v in views
        for key, value in v.row.system_attrs.items()
        if key.endswith("generation")
    ]
    assert len(generations) == 16
    assert max(generations) >= 2, generations


def test_a_pruned_trial_without_every_value_is_told_as_failed():
    spec = multi_spec()
    params = {"optimizer.lr": 0.01, "model.layers[0].out_channels": 8}
    views = [
        view(0, TrialState.succeeded, params, val_accuracy=[0.5, 0.9], parameters=5000),
        # Pruned before any validation value came in: no values, nothing to learn from.
        view(1, TrialState.pruned, params, val_accuracy=[]),
    ]
    records = optuna_records(spec, views)
    assert [r.state for r in records] == [OptunaState.COMPLETE, OptunaState.FAIL]
    assert records[0].values == [0.9, 5000]
    assert ask(STUDY_ID, spec, {}, records).number == 2
