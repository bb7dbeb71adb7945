"""The Optuna export: a study's JSON, its trials and their jobs' metrics written as an Optuna
SQLite storage, then read back through Optuna itself."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from cli.client.optuna_export import journal_storage, study_name, write_study
from shared.study_spec import StudySpec, encode_choice
from testbed.stack import free_port, wait_until

SCHEDULES = [{"name": "constant"}, {"name": "step", "step_size": 1, "gamma": 0.5}]


def study_json(**fields: Any) -> dict[str, Any]:
    """A study resource as GET /v1/studies/{id} answers it."""
    body: dict[str, Any] = {
        "name": "lr-sched",
        "base": {"epochs": 3},
        "space": {
            "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "epochs": {"type": "int", "low": 1, "high": 3},
            "schedule": {"type": "categorical", "choices": SCHEDULES},
        },
        "objective": {"metric": "test_accuracy", "reduce": "best"},
        **fields.pop("spec", {}),
    }
    return {
        "id": "stu_1",
        "name": body["name"],
        "status": "succeeded",
        "spec": StudySpec.model_validate(body).model_dump(mode="json"),
        **fields,
    }


def trial_json(number: int, state: str = "succeeded", **fields: Any) -> dict[str, Any]:
    """A row of GET /v1/studies/{id}/trials."""
    return {
        "number": number,
        "state": state,
        "params": {"optimizer.lr": 0.05, "epochs": 3, "schedule": SCHEDULES[1]},
        "value": None,
        "epochs_completed": 0,
        "job_id": None if state == "infeasible" else f"job_{number}",
        "reason": None,
        "confirms": None,
        "seed": 0,
        **fields,
    }


def metric_rows(*accuracies: float) -> list[dict[str, Any]]:
    """A job's metrics items, epoch 0 first."""
    return [
        {"epoch": epoch, "test_accuracy": accuracy, "test_loss": 1 - accuracy}
        for epoch, accuracy in enumerate(accuracies)
    ]


@contextmanager
def loaded(path: Path, name: str) -> Iterator[optuna.Study]:
    yield optuna.load_study(study_name=name, storage=journal_storage(path))


def export(tmp_path: Path, study: dict[str, Any], trials: list[dict[str, Any]], metrics=None):
    path = tmp_path / "study.db"
    assert write_study(path, study, trials, metrics or {}) == len(trials)
    return path


class TestWriteStudy:
    def test_every_state_and_value_reads_back_through_optuna(self, tmp_path):
        trials = [
            trial_json(0, "succeeded", value=0.9, epochs_completed=3),
            trial_json(1, "pruned", value=0.7, epochs_completed=2),
            trial_json(2, "failed", reason="out of memory"),
            trial_json(3, "cancelled"),
            trial_json(4, "infeasible", reason="too many parameters"),
            trial_json(5, "running", epochs_completed=1),
            trial_json(6, "queued"),
        ]
        metrics = {
            "job_0": metric_rows(0.5, 0.9, 0.85),
            "job_1": metric_rows(0.7, 0.6),
            "job_5": metric_rows(0.4),
        }
        path = export(tmp_path, study_json(), trials, metrics)
        with loaded(path, "lr-sched") as study:
            got = [(t.number, t.state, t.value) for t in study.get_trials(deepcopy=False)]
            assert study.direction == optuna.study.StudyDirection.MAXIMIZE
            assert study.metric_names == ["test_accuracy"]
            assert study.user_attrs["tunelab_study_id"] == "stu_1"
        assert got == [
            (0, TrialState.COMPLETE, 0.9),
            # Optuna's rule: a pruned trial's value is its last reported one.
            (1, TrialState.PRUNED, 0.6),
            (2, TrialState.FAIL, None),
            (3, TrialState.FAIL, None),
            (4, TrialState.FAIL, None),
            (5, TrialState.RUNNING, None),
            (6, TrialState.WAITING, None),
        ]

    def test_intermediate_values_are_the_metric_by_epochs_completed(self, tmp_path):
        trials = [trial_json(0, "succeeded", value=0.9), trial_json(1, "pruned", value=0.7)]
        metrics = {"job_0": metric_rows(0.5, 0.9, 0.85), "job_1": metric_rows(0.7, 0.6)}
        with loaded(export(tmp_path, study_json(), trials, metrics), "lr-sched") as study:
            first, second = study.trials
        assert first.intermediate_values == {1: 0.5, 2: 0.9, 3: 0.85}
        assert second.intermediate_values == {1: 0.7, 2: 0.6}

    def test_minimizing_a_loss_uses_that_metric(self, tmp_path):
        study = study_json(spec={"objective": {"metric": "test_loss"}})
        metrics = {"job_0": metric_rows(0.5, 0.75)}
        path = export(tmp_path, study, [trial_json(0, value=0.25)], metrics)
        with loaded(path, "lr-sched") as exported:
            assert exported.direction == optuna.study.StudyDirection.MINIMIZE
            assert exported.trials[0].intermediate_values == {1: 0.5, 2: 0.25}

    def test_params_and_distributions_follow_the_space(self, tmp_path):
        path = export(tmp_path, study_json(), [trial_json(0, value=0.9)])
        with loaded(path, "lr-sched") as study:
            (trial,) = study.trials
        assert trial.distributions == {
            "optimizer.lr": FloatDistribution(0.001, 0.3, log=True),
            "epochs": IntDistribution(1, 3),
            "schedule": CategoricalDistribution([encode_choice(s) for s in SCHEDULES]),
        }
        assert trial.params == {
            "optimizer.lr": 0.05,
            "epochs": 3,
            # An object choice is held as the API's samplers hold it: canonical JSON text.
            "schedule": '{"gamma":0.5,"name":"step","step_size":1}',
        }

    def test_a_float_step_and_an_int_step_and_log_are_kept(self, tmp_path):
        space = {
            "optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1, "step": 0.01},
            "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 16, "step": 4},
            "batch_size": {"type": "int", "low": 32, "high": 256, "log": True},
        }
        params = {"optimizer.lr": 0.05, "model.layers[0].out_channels": 8, "batch_size": 64}
        study = study_json(
            spec={"space": space, "base": {"model": {"preset": "compact-8k"}, "epochs": 2}}
        )
        path = export(tmp_path, study, [trial_json(0, value=0.9, params=params)])
        with loaded(path, "lr-sched") as exported:
            (trial,) = exported.trials
        assert trial.distributions == {
            "optimizer.lr": FloatDistribution(0.01, 0.1, step=0.01),
            "model.layers[0].out_channels": IntDistribution(4, 16, step=4),
            "batch_size": IntDistribution(32, 256, log=True),
        }
        assert trial.params == params

    def test_trials_are_written_in_number_order_with_their_tunelab_attrs(self, tmp_path):
        trials = [
            trial_json(1, "succeeded", value=0.8, confirms=0, seed=7),
            trial_json(0, "infeasible", reason="too many parameters"),
        ]
        with loaded(export(tmp_path, study_json(), trials), "lr-sched") as study:
            attrs = [t.user_attrs for t in study.trials]
        assert attrs == [
            {
                "tunelab_trial": 0,
                "job_id": None,
                "state": "infeasible",
                "reason": "too many parameters",
                "confirms": None,
                "seed": 0,
            },
            {
                "tunelab_trial": 1,
                "job_id": "job_1",
                "state": "succeeded",
                "reason": None,
                "confirms": 0,
                "seed": 7,
            },
        ]

    def test_a_study_without_a_name_is_named_by_its_id(self, tmp_path):
        study = study_json(spec={"name": None})
        path = export(tmp_path, study, [trial_json(0, value=0.9)])
        assert optuna.get_all_study_names(journal_storage(path)) == ["stu_1"]

    def test_an_existing_file_is_kept_unless_overwrite(self, tmp_path):
        path = tmp_path / "study.db"
        path.write_text("mine")
        with pytest.raises(FileExistsError):
            write_study(path, study_json(), [trial_json(0, value=0.9)], {})
        assert path.read_text() == "mine"
        write_study(path, study_json(), [trial_json(0, value=0.9)], {}, overwrite=True)
        with loaded(path, "lr-sched") as study:
            assert len(study.trials) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["study.db"]


class TestTimes:
    def test_each_trial_keeps_its_jobs_start_and_end(self, tmp_path):
        trials = [
            trial_json(
                0,
                value=0.9,
                started_at="2026-12-01T10:00:00Z",
                finished_at="2026-12-01T10:05:30Z",
            ),
            trial_json(1, "infeasible", finished_at="2026-12-01T10:06:00Z"),
        ]
        path = export(tmp_path, study_json(), trials)
        with loaded(path, "lr-sched") as study:
            first, second = study.trials
        assert (first.datetime_complete - first.datetime_start).total_seconds() == 330
        assert second.datetime_start == second.datetime_complete
        assert (second.datetime_start - first.datetime_start).total_seconds() == 360


TWO_OBJECTIVES = [
    {"metric": "val_accuracy", "direction": "maximize"},
    {"metric": "parameters", "direction": "minimize"},
]


class TestSeveralObjectives:
    def test_both_directions_and_metric_names_and_each_trials_values(self, tmp_path):
        study = study_json(spec={"objective": TWO_OBJECTIVES[0], "objectives": TWO_OBJECTIVES})
        trials = [
            trial_json(0, "succeeded", values=[0.93, 7014.0], epochs_completed=3),
            trial_json(1, "succeeded", values=[0.95, 7998.0], epochs_completed=3),
            trial_json(2, "pruned", values=[0.41, 7342.0], epochs_completed=1, reason="pareto"),
            trial_json(3, "infeasible", reason="breaks max_parameters"),
            trial_json(4, "succeeded", values=[0.90, 7998.0], epochs_completed=3),
        ]
        rows = [{"epoch": 0, "val_accuracy": 0.41, "test_accuracy": 0.4}]
        path = export(tmp_path, study, trials, {"job_2": rows})
        with loaded(path, "lr-sched") as exported:
            assert exported.directions == [
                optuna.study.StudyDirection.MAXIMIZE,
                optuna.study.StudyDirection.MINIMIZE,
            ]
            assert exported.metric_names == ["val_accuracy", "parameters"]
            assert exported.user_attrs["objectives"][1]["metric"] == "parameters"
            got = [(t.number, t.state, t.values) for t in exported.trials]
            front = sorted(t.number for t in exported.best_trials)
            pruned = exported.trials[2]
        assert got == [
            (0, TrialState.COMPLETE, [0.93, 7014.0]),
            (1, TrialState.COMPLETE, [0.95, 7998.0]),
            # As Optuna keeps a pruned trial of several objectives: without values.
            (2, TrialState.PRUNED, None),
            (3, TrialState.FAIL, None),
            (4, TrialState.COMPLETE, [0.90, 7998.0]),
        ]
        assert pruned.user_attrs["values_at_stop"] == [0.41, 7342.0]
        assert pruned.intermediate_values == {}
        # Optuna's own front of the file: trial 4 is dominated by trial 1.
        assert front == [0, 1]

    def test_a_validation_metric_missing_from_an_epoch_is_left_out(self, tmp_path):
        study = study_json(spec={"objective": {"metric": "val_accuracy"}})
        rows = [
            {"epoch": 0, "val_accuracy": None, "test_accuracy": 0.5},
            {"epoch": 1, "val_accuracy": 0.8, "test_accuracy": 0.7},
        ]
        path = export(tmp_path, study, [trial_json(0, value=0.8)], {"job_0": rows})
        with loaded(path, "lr-sched") as exported:
            assert exported.trials[0].intermediate_values == {2: 0.8}


def two_objective_study() -> dict[str, Any]:
    return study_json(spec={"objective": TWO_OBJECTIVES[0], "objectives": TWO_OBJECTIVES})


class TestOptunaDashboard:
    @pytest.mark.parametrize(
        ("study", "trials", "directions"),
        [
            (study_json(), [trial_json(0, value=0.9), trial_json(1, value=0.8)], ["maximize"]),
            (
                two_objective_study(),
                [
                    trial_json(0, values=[0.93, 7014.0]),
                    trial_json(1, values=[0.95, 7998.0]),
                    trial_json(2, "pruned", values=[0.4, 7342.0]),
                ],
                ["maximize", "minimize"],
            ),
        ],
        ids=["one-objective", "two-objectives"],
    )
    def test_the_dashboard_serves_the_exported_file_as_it_is(
        self, tmp_path, study, trials, directions
    ):
        path = export(tmp_path, study, trials)
        port = free_port()
        log = tmp_path / "dashboard.log"
        command = [str(Path(sys.executable).parent / "optuna-dashboard"), str(path)]
        with log.open("wb") as output:
            dashboard = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(port)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )

        def studies() -> list[dict[str, Any]] | None:
            if dashboard.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited: {log.read_text()}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2)
            except httpx.TransportError:
                return None
            return answer.json()["study_summaries"] if answer.status_code == 200 else None

        try:
            listed = wait_until(studies, 60, "optuna-dashboard to answer")
        finally:
            dashboard.terminate()
            dashboard.wait(timeout=10)
        assert [summary["study_name"] for summary in listed] == [study_name(study)]
        assert listed[0]["directions"] == directions
