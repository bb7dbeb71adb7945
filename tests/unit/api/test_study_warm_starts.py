"""Studies that start from what is known, and winners confirmed on every training image:
`enqueue`, `warm_start` and `confirm.refit` through the routes, with the worker played by
the test (real trials run in tests/integration/test_study_warm_starts.py)."""

import statistics
from typing import Any

import pytest
from sqlmodel import Session

from api.core.models import Study
from api.studies.optuna_bridge import NSGA2_GENERATION, TrialRecord, ask
from shared.study_spec import StudySpec
from tests.unit.api.study_calls import (
    TWO_OBJECTIVES,
    Workers,
    problems,
    run_study,
    study_body,
    trials_of,
)
from tests.unit.api.tenant_keys import TenantKeys

WIDTH = "model.layers[0].out_channels"
LR = "optimizer.lr"
# Four points, so that a study of two trials leaves two for the next.
WIDTHS_GRID = {
    "space": {WIDTH: {"type": "int", "low": 4, "high": 16, "step": 4}},
    "sampler": {"name": "grid", "seed": 3},
    "max_trials": 2,
}


@pytest.fixture
def workers(client, worker_auth, dispatcher) -> Workers:
    return Workers(client, worker_auth, dispatcher)


def job_of(client, auth, job_id: str) -> dict[str, Any]:
    """The job, with its epochs' metrics under `metrics`."""
    response = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert response.status_code == 200, response.text
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth)
    assert metrics.status_code == 200, metrics.text
    return {**response.json(), "metrics": metrics.json()["items"]}


class TestEnqueue:
    def test_the_enqueued_configurations_run_first_in_order(self, client, auth, scheduler, workers):
        enqueued = [{LR: 0.02, WIDTH: 8}, {LR: 0.2, WIDTH: 16}]
        study = run_study(client, auth, scheduler, workers, study_body(enqueue=enqueued))
        trials = trials_of(client, auth, study["id"])
        assert [t["params"] for t in trials[:2]] == enqueued
        assert len(trials) == 4 and study["trials"]["succeeded"] == 4
        # What follows is sampled: the random sampler's own draws, not the enqueued again.
        assert all(t["params"] not in enqueued for t in trials[2:])

    def test_a_key_left_out_is_sampled(self, client, auth, scheduler, workers):
        body = study_body(enqueue=[{WIDTH: 12}], max_trials=1)
        study = run_study(client, auth, scheduler, workers, body)
        (trial,) = trials_of(client, auth, study["id"])
        assert trial["params"][WIDTH] == 12
        assert 0.001 <= trial["params"][LR] <= 0.3

    def test_an_enqueued_configuration_over_a_constraint_is_infeasible(
        self, client, auth, scheduler, workers
    ):
        body = study_body(
            enqueue=[{LR: 0.05, WIDTH: 16}], constraints={"max_parameters": 7000}, max_trials=1
        )
        study = run_study(client, auth, scheduler, workers, body)
        (trial,) = trials_of(client, auth, study["id"])
        assert trial["state"] == "infeasible" and "max_parameters" in trial["reason"]

    @pytest.mark.parametrize(
        ("enqueue", "fields", "words"),
        [
            ([{LR: 0.9}], ['enqueue[0]["optimizer.lr"]'], "between 0.001 and 0.3"),
            ([{WIDTH: 6}], ['enqueue[0]["model.layers[0].out_channels"]'], "multiple of 4"),
            ([{WIDTH: 4.5}], ['enqueue[0]["model.layers[0].out_channels"]'], "an integer"),
            ([{LR: "fast"}], ['enqueue[0]["optimizer.lr"]'], "a number"),
            ([{"batch_size": 64}], ["enqueue[0]"], "not in the space"),
            ([{LR: 0.05}] * 5, ["enqueue"], "at most max_trials"),
        ],
    )
    def test_a_configuration_outside_the_space_is_a_422_naming_it(
        self, client, auth, enqueue, fields, words
    ):
        refused = problems(
            client.post("/v1/studies", json=study_body(enqueue=enqueue), headers=auth)
        )
        assert list(refused) == fields
        assert words in refused[fields[0]]

    def test_a_grid_study_enqueues_whole_points(self, client, auth):
        body = study_body(
            space={
                WIDTH: {"type": "int", "low": 4, "high": 16, "step": 4},
                "batch_size": {"type": "categorical", "choices": [64, 128]},
            },
            sampler={"name": "grid"},
            enqueue=[{WIDTH: 8}],
        )
        refused = problems(client.post("/v1/studies", json=body, headers=auth))
        assert list(refused) == ["enqueue[0]"] and "batch_size" in refused["enqueue[0]"]

    def test_too_many_configurations_are_refused_before_any_is_checked(self, client, auth):
        body = study_body(enqueue=[{LR: 0.05}] * 33, max_trials=40)
        assert list(problems(client.post("/v1/studies", json=body, headers=auth))) == ["enqueue"]


class TestWarmStart:
    def test_a_grid_study_runs_only_the_points_its_warm_start_left(
        self, client, auth, scheduler, workers, dispatcher
    ):
        first = run_study(client, auth, scheduler, workers, study_body(**WIDTHS_GRID))
        jobs_before = len(dispatcher.sent)
        body = study_body(**WIDTHS_GRID, warm_start={"study_id": first["id"]})
        second = run_study(client, auth, scheduler, workers, body)
        assert second["warm_trials"] == 2
        # Not re-run, not counted: the second study queued its own two trials and no more.
        assert second["trials"]["total"] == 2
        assert len(dispatcher.sent) == jobs_before + 2
        widths = [t["params"][WIDTH] for t in trials_of(client, auth, first["id"])]
        widths += [t["params"][WIDTH] for t in trials_of(client, auth, second["id"])]
        assert sorted(widths) == [4, 8, 12, 16]

    def test_trials_are_told_by_this_studys_objectives_and_constraints(
        self, client, auth, scheduler, workers, engine
    ):
        first = run_study(client, auth, scheduler, workers, study_body(max_trials=3))
        first_trials = trials_of(client, auth, first["id"])
        body = study_body(
            objectives=TWO_OBJECTIVES,
            constraints={"max_parameters": 7000},
            warm_start={"study_id": first["id"]},
        )
        created = client.post("/v1/studies", json=body, headers=auth)
        assert created.status_code == 201, created.text
        with Session(engine) as session:
            study = session.get(Study, created.json()["id"])
            assert study is not None
            told = [TrialRecord.from_json(stored) for stored in study.warm_trials]
        assert [r.params for r in told] == [t["params"] for t in first_trials]
        for record, trial in zip(told, first_trials, strict=True):
            job = job_of(client, auth, trial["job_id"])
            parameters = job["analysis"]["parameters"]
            assert record.values is not None and len(record.values) == 2
            if parameters > 7000:
                # Over this study's limit: told as its infeasible trials are, the worst seen.
                assert record.values[1] >= max(
                    job_of(client, auth, t["job_id"])["analysis"]["parameters"]
                    for t in first_trials
                )
            else:
                assert record.values == [trial["value"], parameters]

    def test_an_unknown_or_foreign_study_is_a_422(self, client, auth, engine, scheduler, workers):
        theirs = TenantKeys(engine).headers("other-tenant")
        foreign = run_study(client, theirs, scheduler, workers, study_body(max_trials=1))
        for study_id in (foreign["id"], "stu_000000000000000000000000"):
            body = study_body(warm_start={"study_id": study_id})
            refused = problems(client.post("/v1/studies", json=body, headers=auth))
            assert list(refused) == ["warm_start.study_id"]
            assert f"you have no study {study_id}" in refused["warm_start.study_id"]

    def test_another_space_is_a_422_naming_where_it_differs(self, client, auth, scheduler, workers):
        first = run_study(client, auth, scheduler, workers, study_body(max_trials=1))
        space = {**study_body()["space"], LR: {"type": "float", "low": 0.01, "high": 0.3}}
        body = study_body(space=space, warm_start={"study_id": first["id"]})
        refused = problems(client.post("/v1/studies", json=body, headers=auth))
        assert "another space" in refused["warm_start.study_id"]
        assert LR in refused["warm_start.study_id"]


class TestSamplerHistory:
    def spec(self) -> StudySpec:
        return StudySpec.model_validate(
            study_body(
                objectives=TWO_OBJECTIVES,
                sampler={"name": "nsga2", "population_size": 2, "seed": 1},
            )
        )

    def warm(self) -> list[TrialRecord]:
        from optuna.trial import TrialState

        return [
            TrialRecord(number, TrialState.COMPLETE, {LR: lr, WIDTH: width}, values=[acc, size])
            for number, (lr, width, acc, size) in enumerate(
                [(0.05, 8, 0.98, 5000.0), (0.01, 4, 0.95, 3000.0)]
            )
        ]

    def test_nsga2_breeds_its_first_trial_from_the_warm_start(self):
        spec = self.spec()
        cold = ask("stu_a", spec, {}, [])
        warm = ask("stu_a", spec, {}, [], warm=self.warm())
        assert cold.number == warm.number == 0
        assert cold.system_attrs[NSGA2_GENERATION] == 0
        # The two warm trials make the first generation: this one is their child.
        assert warm.system_attrs[NSGA2_GENERATION] == 1

    def test_an_enqueued_configuration_is_asked_as_given(self):
        asked = ask("stu_a", self.spec(), {}, [], warm=self.warm(), enqueued={LR: 0.03, WIDTH: 12})
        assert asked.number == 0 and asked.params == {LR: 0.03, WIDTH: 12}


class TestRefit:
    def test_the_top_configurations_train_again_on_every_image(
        self, client, auth, scheduler, workers
    ):
        body = study_body(max_trials=4, confirm={"top_k": 2, "seeds": 3})
        study = run_study(client, auth, scheduler, workers, body)
        trials = trials_of(client, auth, study["id"])
        search = [t for t in trials if t["confirms"] is None]
        by_validation = sorted(search, key=lambda t: (-t["value"], t["number"]))
        confirmed = study["confirmed"]
        # In the order the search chose them, on validation.
        assert [c["trial"] for c in confirmed] == [t["number"] for t in by_validation[:2]]
        for configuration in confirmed:
            runs = [t for t in trials if t["confirms"] == configuration["trial"]]
            assert len(runs) == 3 == configuration["n"]
            assert sorted(configuration["job_ids"]) == sorted(t["job_id"] for t in runs)
            jobs = [job_of(client, auth, t["job_id"]) for t in runs]
            for job in jobs:
                assert job["spec"]["data"]["validation"] == 0
                assert job["spec"]["data"]["train_subset"] is None
            assert len({job["spec"]["seed"] for job in jobs}) == 3
            finals = [job["metrics"][-1]["test_accuracy"] for job in jobs]
            lasts = [m["test_accuracy"] for job in jobs for m in job["metrics"][-3:]]
            assert configuration["test_mean"] == pytest.approx(statistics.fmean(finals))
            assert configuration["test_std"] == pytest.approx(statistics.stdev(finals))
            assert configuration["test_min_last3"] == min(lasts)
            assert configuration["parameters"] == jobs[0]["analysis"]["parameters"]
            assert configuration["mean"] is None

    def test_a_study_of_several_objectives_confirms_its_front(
        self, client, auth, scheduler, workers
    ):
        body = study_body(objectives=TWO_OBJECTIVES, max_trials=4, confirm={"top_k": 3, "seeds": 1})
        study = run_study(client, auth, scheduler, workers, body)
        front = [trial["number"] for trial in study["pareto"]]
        assert [c["trial"] for c in study["confirmed"]] == front[:3]
        assert all(c["n"] == 1 and c["test_mean"] is not None for c in study["confirmed"])
