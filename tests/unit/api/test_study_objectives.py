"""Studies v2 through the routes: what a study may choose on (validation, never test), the
10,000 images it holds out by default, the leaderboard's validation value beside its test
accuracy, and studies of several objectives (their front, `values`, `order=pareto`, the
pareto pruner), with the worker played by the test."""

from typing import Any

import pytest

from shared.study_spec import STUDY_VALIDATION_IMAGES
from tests.unit.api.study_calls import (
    GOOD_LR,
    HOPELESS_LR,
    QUICK_BASE,
    TWO_OBJECTIVES,
    Workers,
    problems,
    run_study,
    study_body,
    trials_of,
    validation_curve,
)
from tests.unit.api.tenant_calls import error_fields


@pytest.fixture
def workers(client, worker_auth, dispatcher) -> Workers:
    return Workers(client, worker_auth, dispatcher)


class TestWhatAStudyMayChooseOn:
    @pytest.mark.parametrize("metric", ["test_accuracy", "test_loss"])
    def test_a_test_objective_is_a_422_saying_why(self, client, auth, metric):
        body = study_body(objective={"metric": metric})
        refused = problems(client.post("/v1/studies", json=body, headers=auth))
        assert list(refused) == ["objective.metric"]
        assert "may not choose hyperparameters" in refused["objective.metric"]
        assert f"val_{metric.removeprefix('test_')}" in refused["objective.metric"]

    def test_a_test_objective_among_several_is_named_by_its_place(self, client, auth):
        body = study_body(
            objectives=[*TWO_OBJECTIVES, {"metric": "test_loss", "direction": "minimize"}]
        )
        assert error_fields(client.post("/v1/studies", json=body, headers=auth)) == [
            "objectives[2].metric"
        ]

    def test_more_than_three_objectives_is_a_422(self, client, auth):
        body = study_body(
            objectives=[
                *TWO_OBJECTIVES,
                {"metric": "val_loss"},
                {"metric": "multiply_adds"},
            ]
        )
        assert error_fields(client.post("/v1/studies", json=body, headers=auth)) == ["objectives"]

    def test_a_metric_twice_is_a_422(self, client, auth):
        body = study_body(objectives=[{"metric": "val_accuracy"}, {"metric": "val_accuracy"}])
        refused = problems(client.post("/v1/studies", json=body, headers=auth))
        assert "twice: val_accuracy" in refused["objectives"]

    def test_static_objectives_alone_are_a_422(self, client, auth):
        body = study_body(objectives=[{"metric": "parameters"}, {"metric": "multiply_adds"}])
        refused = problems(client.post("/v1/studies", json=body, headers=auth))
        assert "measured by training" in refused["objectives"]

    def test_objective_and_different_objectives_are_a_422(self, client, auth):
        body = study_body(objective={"metric": "val_loss"}, objectives=TWO_OBJECTIVES)
        assert error_fields(client.post("/v1/studies", json=body, headers=auth)) == ["objectives"]

    @pytest.mark.parametrize(
        ("fields", "field", "words"),
        [
            ({"pruner": {"name": "pareto"}}, "pruner.name", "median, asha or hyperband"),
            (
                {"objectives": TWO_OBJECTIVES, "pruner": {"name": "asha"}},
                "pruner.name",
                "prunes with pareto",
            ),
            (
                {"objectives": TWO_OBJECTIVES, "sampler": {"name": "cmaes"}},
                "sampler.name",
                "tpe, nsga2, random, grid or qmc",
            ),
            (
                {
                    "objectives": TWO_OBJECTIVES,
                    "confirm": {"top_k": 1, "seeds": 1, "refit": False},
                },
                "confirm.refit",
                "front",
            ),
        ],
    )
    def test_what_works_on_one_objective_only_or_on_several_only(
        self, client, auth, fields, field, words
    ):
        refused = problems(client.post("/v1/studies", json=study_body(**fields), headers=auth))
        assert list(refused) == [field]
        assert words in refused[field]

    def test_a_validation_objective_on_a_base_holding_nothing_out_is_a_422(self, client, auth):
        body = study_body(base={**QUICK_BASE, "data": {"validation": 0}})
        refused = problems(client.post("/v1/studies", json=body, headers=auth))
        assert list(refused) == ["base.data.validation"]

    def test_a_subset_that_the_default_validation_leaves_no_room_for_is_named(self, client, auth):
        body = study_body(base={"data": {"train_subset": 55_000}})
        refused = problems(client.post("/v1/studies", json=body, headers=auth))
        assert list(refused) == ["base.data.train_subset"]
        assert "unless its base sets data.validation" in refused["base.data.train_subset"]

    def test_a_v1_body_without_objective_chooses_on_validation_accuracy(self, client, auth):
        created = client.post("/v1/studies", json=study_body(), headers=auth)
        assert created.status_code == 201, created.text
        spec = created.json()["spec"]
        assert spec["objective"] == {
            "metric": "val_accuracy",
            "direction": "maximize",
            "reduce": "best",
        }
        assert spec["objectives"] is None

    def test_objectives_of_one_is_a_study_of_one(self, client, auth):
        body = study_body(objectives=[{"metric": "val_loss", "reduce": "last"}])
        spec = client.post("/v1/studies", json=body, headers=auth).json()["spec"]
        assert spec["objective"] == {
            "metric": "val_loss",
            "direction": "minimize",
            "reduce": "last",
        }


class TestDefaultValidation:
    def test_a_base_without_validation_holds_10000_images_out_as_stored(
        self, client, auth, scheduler, dispatcher
    ):
        created = client.post("/v1/studies", json=study_body(), headers=auth).json()
        assert STUDY_VALIDATION_IMAGES == 10_000
        assert created["spec"]["base"]["data"]["validation"] == 10_000
        scheduler.run_once()
        (job_id,) = dispatcher.sent
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert job["spec"]["data"]["validation"] == 10_000
        assert job["spec"]["data"]["train_subset"] == 256

    def test_a_base_that_says_keeps_its_own(self, client, auth):
        body = study_body(base={**QUICK_BASE, "data": {"validation": 500, "train_subset": 256}})
        created = client.post("/v1/studies", json=body, headers=auth).json()
        assert created["spec"]["base"]["data"]["validation"] == 500


class TestLeaderboard:
    def test_each_trial_shows_its_validation_value_and_its_test_accuracy_at_best_validation(
        self, client, auth, scheduler, workers
    ):
        study = run_study(client, auth, scheduler, workers, study_body())
        trials = trials_of(client, auth, study["id"])
        for trial in trials:
            params = trial["params"]
            curve = [
                validation_curve(
                    params["optimizer.lr"], params["model.layers[0].out_channels"], e, 3
                )
                for e in range(3)
            ]
            assert trial["value"] == max(curve)
            assert trial["values"] == [max(curve)]
            # Validation is best at the last epoch; test was best at the first (0.8).
            assert trial["test_accuracy"] == pytest.approx(0.6)
            job = client.get(f"/v1/jobs/{trial['job_id']}", headers=auth).json()
            assert trial["test_accuracy"] == job["best"]["test_accuracy"]
        assert study["best"]["value"] == max(t["value"] for t in trials)
        assert study["best"]["test_accuracy"] == pytest.approx(0.6)
        assert study["pareto"] is None

    def test_trials_without_validation_metrics_have_no_value_and_break_nothing(
        self, client, auth, scheduler, workers
    ):
        workers.validate = False
        study = run_study(client, auth, scheduler, workers, study_body(max_trials=2))
        trials = trials_of(client, auth, study["id"], order="value")
        assert [t["state"] for t in trials] == ["succeeded", "succeeded"]
        assert {(t["value"], t["test_accuracy"]) for t in trials} == {(None, None)}
        assert study["best"] is None and study["status"] == "succeeded"
        with client.stream("GET", f"/v1/studies/{study['id']}/events", headers=auth) as stream:
            assert stream.status_code == 200
            body = "".join(stream.iter_text())
        assert body.count("event: trial_finished") == 2


def multi_body(**fields: Any) -> dict[str, Any]:
    return study_body(
        objectives=TWO_OBJECTIVES,
        sampler={"name": "nsga2", "seed": 4, "population_size": 4},
        max_trials=8,
        **fields,
    )


class TestSeveralObjectives:
    def test_the_front_holds_no_trial_another_dominates(self, client, auth, scheduler, workers):
        study = run_study(client, auth, scheduler, workers, multi_body())
        assert study["status"] == "succeeded" and study["best"] is None
        trials = trials_of(client, auth, study["id"])
        assert all(len(t["values"]) == 2 and t["value"] is None for t in trials)

        def dominated(values: list[float]) -> bool:
            return any(
                o["values"][0] >= values[0]
                and o["values"][1] <= values[1]
                and o["values"] != values
                for o in trials
            )

        front = study["pareto"]
        assert front and not any(dominated(t["values"]) for t in front)
        on_front = {t["number"] for t in front}
        assert on_front == {t["number"] for t in trials if not dominated(t["values"])}
        for member in front:
            trial = trials[member["number"]]
            assert (member["job_id"], member["params"], member["values"]) == (
                trial["job_id"],
                trial["params"],
                trial["values"],
            )
            assert member["test_accuracy"] == trial["test_accuracy"]
        # By the first objective, best first.
        firsts = [t["values"][0] for t in front]
        assert firsts == sorted(firsts, reverse=True)
        assert set(study["importances"] or {}) <= set(study["spec"]["space"])

    def test_order_pareto_lists_the_front_first(self, client, auth, scheduler, workers):
        study = run_study(client, auth, scheduler, workers, multi_body())
        listed = trials_of(client, auth, study["id"], order="pareto")
        ranks = [t["pareto_rank"] for t in listed]
        front = [t["number"] for t in study["pareto"]]
        assert [t["number"] for t in listed[: len(front)]] == front
        assert ranks[: len(front)] == [0] * len(front)
        ranked = [r for r in ranks if r is not None]
        assert ranked == sorted(ranked) and ranks[: len(ranked)] == ranked

    def test_parameters_are_the_analysis_count_known_before_training(
        self, client, auth, scheduler, dispatcher
    ):
        study_id = client.post("/v1/studies", json=multi_body(), headers=auth).json()["id"]
        scheduler.run_once()
        (queued,) = trials_of(client, auth, study_id)
        job = client.get(f"/v1/jobs/{queued['job_id']}", headers=auth).json()
        # No epoch yet: not every objective has a value, so there are no values.
        assert queued["values"] is None and queued["state"] == "queued"
        assert job["analysis"]["parameters"] > 0


class TestParetoPruner:
    def test_a_dominated_trial_is_stopped_early_and_a_non_dominated_one_is_not(
        self, client, auth, scheduler, workers
    ):
        body = study_body(
            base={**QUICK_BASE, "epochs": 4},
            space={
                "optimizer.lr": {"type": "categorical", "choices": [GOOD_LR, HOPELESS_LR]},
                "model.layers[0].out_channels": {"type": "categorical", "choices": [4, 12]},
            },
            objectives=TWO_OBJECTIVES,
            sampler={"name": "grid", "seed": 0},
            pruner={"name": "pareto", "n_warmup_epochs": 1},
        )
        study = run_study(client, auth, scheduler, workers, body)
        trials = trials_of(client, auth, study["id"])
        by_params = {
            (t["params"]["optimizer.lr"], t["params"]["model.layers[0].out_channels"]): t
            for t in trials
        }
        assert len(by_params) == 4
        # The grid's order (seed 0): good-12, hopeless-12, hopeless-4, good-4.
        assert [
            (t["params"]["optimizer.lr"], t["params"]["model.layers[0].out_channels"])
            for t in trials
        ] == [(GOOD_LR, 12), (HOPELESS_LR, 12), (HOPELESS_LR, 4), (GOOD_LR, 4)]
        # Smaller than every completed trial: however far behind, never dominated.
        assert by_params[(HOPELESS_LR, 4)]["state"] == "succeeded"
        assert by_params[(HOPELESS_LR, 4)]["epochs_completed"] == 4
        # Behind a completed trial at least as small, after its first epoch: stopped.
        stopped = by_params[(HOPELESS_LR, 12)]
        assert stopped["state"] == "pruned" and stopped["epochs_completed"] == 1
        assert stopped["reason"].startswith(
            "stopped by the pareto pruner after 1 epochs: dominated by trial 0"
        )
        job = client.get(f"/v1/jobs/{stopped['job_id']}", headers=auth).json()
        assert job["status"] == "pruned" and job["progress"]["epochs_completed"] == 1
        # Smaller and as good as every completed trial: it trains to the end, onto the front.
        assert by_params[(GOOD_LR, 4)]["state"] == "succeeded"
        assert by_params[(GOOD_LR, 4)]["epochs_completed"] == 4
        assert by_params[(GOOD_LR, 4)]["number"] in {t["number"] for t in study["pareto"]}
