"""The front and the pareto pruner's test, decided by Optuna's own dominance helpers: the
front agrees with Optuna's public `Study.best_trials` (if an Optuna upgrade moves the private
helpers, these fail before a study reports a wrong front), and the pruner stops a trial
dominated at the same epoch, and only such a trial."""

import random

import optuna
import pytest
from optuna.trial import TrialState as OptunaState
from optuna.trial import create_trial

from api.studies.pareto import dominates, front_ranks, on_front
from api.studies.pruning import pareto_reason
from api.studies.schemas import TrialState
from shared.study_spec import Objective
from tests.unit.api.trial_histories import multi_spec, view

ACCURACY = Objective(metric="val_accuracy")
PARAMETERS = Objective(metric="parameters")
LOSS = Objective(metric="train_loss")
PARAMS = {"optimizer.lr": 0.01, "model.layers[0].out_channels": 8}


def optuna_front(values: list[list[float]], objectives: list[Objective]) -> list[int]:
    study = optuna.create_study(directions=[o.direction or "maximize" for o in objectives])
    for vector in values:
        study.add_trial(create_trial(state=OptunaState.COMPLETE, values=vector))
    return sorted(trial.number for trial in study.best_trials)


class TestFront:
    @pytest.mark.parametrize("objectives", [[ACCURACY, PARAMETERS], [ACCURACY, PARAMETERS, LOSS]])
    def test_agrees_with_optunas_best_trials(self, objectives):
        rng = random.Random(5)
        for _ in range(20):
            # Ties on purpose: accuracies to two digits, a few parameter counts.
            values = [
                [round(rng.random(), 2), rng.choice([5000, 7000, 9000]), round(rng.random(), 1)][
                    : len(objectives)
                ]
                for _ in range(rng.randint(1, 12))
            ]
            ours = [i for i, kept in enumerate(on_front(values, objectives)) if kept]
            assert ours == optuna_front(values, objectives), values

    def test_ranks_peel_fronts_off_in_turn(self):
        values = [[0.9, 9000], [0.8, 5000], [0.85, 9500], [0.7, 6000], [0.9, 9000]]
        assert on_front(values, [ACCURACY, PARAMETERS]) == [True, True, False, False, True]
        assert front_ranks(values, [ACCURACY, PARAMETERS]) == [0, 0, 1, 1, 0]

    def test_dominates_needs_one_strictly_better(self):
        assert dominates([0.9, 5000], [0.9, 6000], [ACCURACY, PARAMETERS])
        assert not dominates([0.9, 5000], [0.9, 5000], [ACCURACY, PARAMETERS])
        assert not dominates([0.95, 7000], [0.9, 5000], [ACCURACY, PARAMETERS])
        assert not dominates([], [], [])


def pareto_spec(warmup: int = 0):
    return multi_spec(pruner={"name": "pareto", "n_warmup_epochs": warmup})


class TestParetoPruner:
    def test_a_trial_behind_a_smaller_completed_one_at_the_same_epoch_is_stopped(self):
        views = [
            view(
                0, TrialState.succeeded, PARAMS, val_accuracy=[0.6, 0.8, 0.9, 0.95], parameters=5000
            ),
            view(1, TrialState.running, PARAMS, val_accuracy=[0.3], parameters=7000),
        ]
        reason = pareto_reason(pareto_spec(), views, 1, 1)
        assert reason == (
            "stopped by the pareto pruner after 1 epochs: dominated by trial 0 at the same "
            "epoch (val_accuracy 0.3000 against 0.6000, parameters 7000 against 5000)"
        )

    def test_a_smaller_trial_is_never_stopped_by_a_larger_one(self):
        views = [
            view(
                0, TrialState.succeeded, PARAMS, val_accuracy=[0.6, 0.8, 0.9, 0.95], parameters=9000
            ),
            # Far behind, but with fewer parameters: it may end on the front.
            view(1, TrialState.running, PARAMS, val_accuracy=[0.2], parameters=3000),
        ]
        assert pareto_reason(pareto_spec(), views, 1, 1) is None

    def test_a_trial_ahead_at_the_same_epoch_goes_on(self):
        views = [
            view(
                0, TrialState.succeeded, PARAMS, val_accuracy=[0.6, 0.8, 0.9, 0.95], parameters=5000
            ),
            # Behind the completed trial's end, but ahead of where it was after 2 epochs.
            view(1, TrialState.running, PARAMS, val_accuracy=[0.5, 0.85], parameters=7000),
        ]
        assert pareto_reason(pareto_spec(), views, 1, 1) is not None
        assert pareto_reason(pareto_spec(), views, 1, 2) is None

    def test_only_completed_search_trials_count(self):
        lower = [0.2, 0.3]
        views = [
            view(0, TrialState.pruned, PARAMS, val_accuracy=[0.9], parameters=1000),
            view(1, TrialState.running, PARAMS, val_accuracy=[0.9, 0.95], parameters=1000),
            view(
                2,
                TrialState.succeeded,
                PARAMS,
                val_accuracy=[0.9, 0.95],
                parameters=1000,
                confirms=5,
            ),
            view(3, TrialState.running, PARAMS, val_accuracy=lower, parameters=7000),
        ]
        assert pareto_reason(pareto_spec(), views, 3, 1) is None

    def test_nothing_is_stopped_before_the_warm_up_epochs(self):
        views = [
            view(
                0, TrialState.succeeded, PARAMS, val_accuracy=[0.6, 0.8, 0.9, 0.95], parameters=5000
            ),
            view(1, TrialState.running, PARAMS, val_accuracy=[0.3, 0.4], parameters=7000),
        ]
        assert pareto_reason(pareto_spec(warmup=2), views, 1, 1) is None
        assert pareto_reason(pareto_spec(warmup=2), views, 1, 2) is not None

    def test_a_completed_trial_that_trained_fewer_epochs_is_not_compared_past_them(self):
        views = [
            view(0, TrialState.succeeded, PARAMS, val_accuracy=[0.9, 0.95], parameters=5000),
            view(1, TrialState.running, PARAMS, val_accuracy=[0.3, 0.4, 0.5], parameters=7000),
        ]
        assert pareto_reason(pareto_spec(), views, 1, 3) is None

    def test_a_trial_without_a_validation_value_is_never_stopped(self):
        views = [
            view(0, TrialState.succeeded, PARAMS, val_accuracy=[0.9, 0.95], parameters=5000),
            view(1, TrialState.running, PARAMS, val_accuracy=[], parameters=7000),
        ]
        views[1].job.epochs_completed = 1  # type: ignore[union-attr]
        assert pareto_reason(pareto_spec(), views, 1, 1) is None
