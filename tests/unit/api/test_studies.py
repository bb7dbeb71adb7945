"""Studies in process: the routes, the scheduler's passes and the pruner, with the worker
played by the test through the internal routes (real trials run in tests/integration)."""

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.core.models import Study
from api.studies.ledger import add_infeasible_trial
from api.studies.scheduler import StudyScheduler
from shared.settings import Settings
from tests.unit.api.tenant_calls import error_fields
from tests.unit.api.tenant_keys import TenantKeys
from tests.unit.api.worker_calls import WorkerCalls

QUICK_BASE = {"epochs": 3, "data": {"train_subset": 256, "test_subset": 64}}


def study_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "lr-and-batch",
        "base": QUICK_BASE,
        "space": {
            "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "batch_size": {"type": "categorical", "choices": [64, 128]},
        },
        "sampler": {"name": "random", "seed": 1},
        "max_trials": 4,
    }
    return {**body, **fields}


def grid_body(**fields: Any) -> dict[str, Any]:
    return study_body(
        space={
            "batch_size": {"type": "categorical", "choices": [64, 128]},
            "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 8, "step": 4},
        },
        sampler={"name": "grid", "seed": 2},
        **fields,
    )


def accuracy_for(spec: dict[str, Any], epoch: int) -> float:
    """A made-up learning curve: best near lr 0.05, rising with the epochs."""
    distance = math.log10(spec["optimizer"]["lr"]) - math.log10(0.05)
    quality = math.exp(-(distance**2))
    return round(min(0.99, 0.1 + 0.85 * quality * (epoch + 1) / spec["epochs"]), 6)


class FakeWorkers:
    """Plays the worker: claims each queued trial job and reports its epochs."""

    def __init__(self, client: TestClient, worker_auth: dict, auth: dict, dispatcher) -> None:
        self.calls = WorkerCalls(client, worker_auth)
        self.client, self.auth, self.dispatcher = client, auth, dispatcher
        self.done: set[str] = set()
        self.epochs_trained = 0

    def train_sent_jobs(self) -> int:
        trained = 0
        for job_id in list(self.dispatcher.sent):
            if job_id in self.done:
                continue
            self.done.add(job_id)
            claim = self.calls.claim(job_id)
            if claim.status_code != 200:
                continue
            spec = claim.json()["spec"]
            attempt = {
                "attempt": claim.json()["attempt"],
                "lease_token": claim.json()["lease_token"],
            }
            trained += 1
            for epoch in range(spec["epochs"]):
                accuracy = accuracy_for(spec, epoch)
                answer = self.calls.post_epoch(
                    job_id,
                    attempt,
                    epoch,
                    val_accuracy=accuracy,
                    val_loss=1 - accuracy,
                    # Test a little below validation: what the leaderboard reports beside it.
                    test_accuracy=round(accuracy - 0.01, 6),
                ).json()
                self.epochs_trained += 1
                if answer["pruned"] or answer["cancelled"]:
                    break
            else:
                assert self.calls.finish(job_id, attempt).status_code == 200
        return trained


@pytest.fixture
def workers(client, worker_auth, auth, dispatcher) -> FakeWorkers:
    return FakeWorkers(client, worker_auth, auth, dispatcher)


def run_study(client, auth, scheduler, workers, body, passes: int = 100) -> dict[str, Any]:
    created = client.post("/v1/studies", json=body, headers=auth)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    for _ in range(passes):
        scheduler.run_once()
        workers.train_sent_jobs()
        study = client.get(f"/v1/studies/{study_id}", headers=auth).json()
        if study["status"] in ("succeeded", "failed", "cancelled"):
            return study
    raise AssertionError(f"study did not finish: {study}")


def trials_of(client, auth, study_id: str, order: str = "number") -> list[dict[str, Any]]:
    response = client.get(f"/v1/studies/{study_id}/trials", params={"order": order}, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["items"]


class TestSubmitStudy:
    def test_is_stored_queued_with_its_base_resolved(self, client, auth):
        response = client.post("/v1/studies", json=study_body(), headers=auth)
        assert response.status_code == 201, response.text
        study = response.json()
        assert study["status"] == "queued"
        assert study["trials"]["total"] == 0
        assert study["spec"]["base"]["model"]["layers"]
        assert study["spec"]["objective"]["direction"] == "maximize"

    @pytest.mark.parametrize(
        ("space", "field"),
        [
            ({"optimizer.lrr": {"type": "float", "low": 0.1, "high": 1}}, 'space["optimizer.lrr"]'),
            ({"optimizer.lr": {"type": "float", "low": 1, "high": 0.1}}, 'space["optimizer.lr"]'),
            (
                {"optimizer.lr": {"type": "float", "low": 0, "high": 0.1, "log": True}},
                'space["optimizer.lr"]',
            ),
            ({"batch_size": {"type": "categorical", "choices": []}}, 'space["batch_size"].choices'),
            (
                {"model.layers[40].out_channels": {"type": "int", "low": 4, "high": 8}},
                'space["model.layers[40].out_channels"]',
            ),
            (
                {"batch_size": {"type": "categorical", "choices": [64, "many"]}},
                'space["batch_size"].choices[1]',
            ),
        ],
    )
    def test_a_bad_space_entry_is_named(self, client, auth, space, field):
        response = client.post("/v1/studies", json=study_body(space=space), headers=auth)
        assert field in error_fields(response)

    def test_a_grid_refuses_a_float_dimension(self, client, auth):
        body = study_body(sampler={"name": "grid"})
        assert 'space["optimizer.lr"]' in error_fields(
            client.post("/v1/studies", json=body, headers=auth)
        )

    def test_an_invalid_base_is_a_422_naming_its_field(self, client, auth):
        body = study_body(
            base={"epochs": 2, "batch_size_schedule": [{"epoch": 1, "batch_size": 8}]}
        )
        assert "base.batch_size_schedule[0].epoch" in error_fields(
            client.post("/v1/studies", json=body, headers=auth)
        )

    def test_max_trials_has_a_limit(self, client, auth, settings: Settings):
        body = study_body(max_trials=settings.max_trials + 1)
        assert error_fields(client.post("/v1/studies", json=body, headers=auth)) == ["max_trials"]

    def test_idempotency_key_returns_the_same_study(self, client, auth):
        headers = {**auth, "Idempotency-Key": "study-1"}
        first = client.post("/v1/studies", json=study_body(), headers=headers)
        again = client.post("/v1/studies", json=study_body(), headers=headers)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        other = client.post("/v1/studies", json=study_body(max_trials=5), headers=headers)
        assert other.status_code == 409


class TestScheduling:
    def test_a_grid_runs_each_of_its_points_once(self, client, auth, scheduler, workers):
        study = run_study(client, auth, scheduler, workers, grid_body(max_trials=10))
        assert study["status"] == "succeeded"
        trials = trials_of(client, auth, study["id"])
        points = {
            (t["params"]["batch_size"], t["params"]["model.layers[0].out_channels"]) for t in trials
        }
        assert len(trials) == 4 and points == {(64, 4), (64, 8), (128, 4), (128, 8)}
        for trial in trials:
            job = client.get(f"/v1/jobs/{trial['job_id']}", headers=auth).json()
            assert job["study_id"] == study["id"] and job["trial"] == trial["number"]
            assert job["spec"]["batch_size"] == trial["params"]["batch_size"]
            assert (
                job["spec"]["model"]["layers"][0]["out_channels"]
                == trial["params"]["model.layers[0].out_channels"]
            )

    def test_never_more_than_max_parallel_trials_at_once(self, client, auth, scheduler, dispatcher):
        body = study_body(max_parallel_trials=2, max_trials=5)
        study_id = client.post("/v1/studies", json=body, headers=auth).json()["id"]
        for _ in range(3):
            scheduler.run_once()
        assert len(dispatcher.sent) == 2
        assert client.get(f"/v1/studies/{study_id}", headers=auth).json()["trials"]["queued"] == 2

    def test_the_same_seed_samples_the_same_specs(self, client, auth, scheduler, workers):
        first = run_study(client, auth, scheduler, workers, study_body())
        second = run_study(client, auth, scheduler, workers, study_body())
        params = [[t["params"] for t in trials_of(client, auth, s["id"])] for s in (first, second)]
        assert params[0] == params[1]
        assert len({t["optimizer.lr"] for t in params[0]}) == 4

    def test_a_restarted_scheduler_carries_on_without_duplicates(
        self, client, auth, engine, dispatcher, settings, workers
    ):
        body = study_body(max_trials=6, max_parallel_trials=2)
        study_id = client.post("/v1/studies", json=body, headers=auth).json()["id"]
        first = StudyScheduler(engine, dispatcher, settings)
        first.run_once()
        workers.train_sent_jobs()
        first.stop()  # releases the lease, as a clean shutdown does
        second = StudyScheduler(engine, dispatcher, settings)
        for _ in range(20):
            second.run_once()
            workers.train_sent_jobs()
        trials = trials_of(client, auth, study_id)
        assert [t["number"] for t in trials] == list(range(6))
        assert len({t["job_id"] for t in trials}) == 6
        assert client.get(f"/v1/studies/{study_id}", headers=auth).json()["status"] == "succeeded"

    def test_a_second_scheduler_waits_while_the_first_holds_the_lease(
        self, engine, dispatcher, settings
    ):
        first = StudyScheduler(engine, dispatcher, settings)
        second = StudyScheduler(engine, dispatcher, settings)
        assert first.run_once() is True
        assert second.run_once() is False
        assert first.run_once() is True

    def test_importances_and_the_best_trial(self, client, auth, scheduler, workers):
        study = run_study(client, auth, scheduler, workers, study_body(max_trials=6))
        assert set(study["importances"]) == {"optimizer.lr", "batch_size"}
        ranked = trials_of(client, auth, study["id"], order="value")
        assert study["best"]["trial"] == ranked[0]["number"]
        assert study["best"]["value"] == max(t["value"] for t in ranked)
        assert [t["value"] for t in ranked] == sorted((t["value"] for t in ranked), reverse=True)


class TestConstraints:
    def test_an_infeasible_spec_never_reaches_a_worker(
        self, client, auth, scheduler, workers, dispatcher
    ):
        body = study_body(
            space={"model.layers[0].out_channels": {"type": "int", "low": 4, "high": 64}},
            constraints={"max_parameters": 9000},
            max_trials=6,
        )
        study = run_study(client, auth, scheduler, workers, body)
        trials = trials_of(client, auth, study["id"])
        infeasible = [t for t in trials if t["state"] == "infeasible"]
        assert infeasible, trials
        for trial in infeasible:
            assert trial["job_id"] is None
            assert "max_parameters (9000)" in trial["reason"]
        assert len(dispatcher.sent) == len(trials) - len(infeasible)
        assert study["trials"]["infeasible"] == len(infeasible)

    def test_a_spec_that_shrinks_below_one_pixel_is_infeasible(
        self, client, auth, scheduler, workers
    ):
        # Each kernel size is fine on its own; a 15 and then a 9 leave nothing to convolve.
        layers = [
            {"type": "conv", "out_channels": 8},
            {"type": "maxpool", "kernel_size": 2},
            {"type": "conv", "out_channels": 10},
            {"type": "gap"},
        ]
        body = study_body(
            base={**QUICK_BASE, "model": {"layers": layers}},
            space={
                "model.layers[0].kernel_size": {"type": "categorical", "choices": [3, 15]},
                "model.layers[2].kernel_size": {"type": "categorical", "choices": [3, 9]},
            },
            sampler={"name": "grid"},
        )
        study = run_study(client, auth, scheduler, workers, body)
        trials = trials_of(client, auth, study["id"])
        by_kernels = {
            (
                t["params"]["model.layers[0].kernel_size"],
                t["params"]["model.layers[2].kernel_size"],
            ): t
            for t in trials
        }
        assert by_kernels[(15, 9)]["state"] == "infeasible"
        assert "not a valid job" in by_kernels[(15, 9)]["reason"]
        assert "below 1x1" in by_kernels[(15, 9)]["reason"]
        assert {t["state"] for k, t in by_kernels.items() if k != (15, 9)} == {"succeeded"}


class TestPruning:
    def test_hopeless_trials_are_pruned_before_their_last_epoch(
        self, client, auth, scheduler, workers
    ):
        body = study_body(
            base={**QUICK_BASE, "epochs": 6},
            space={
                "optimizer.lr": {
                    "type": "categorical",
                    "choices": [0.05, 0.04, 0.0001, 5.0, 8.0, 0.00002],
                }
            },
            sampler={"name": "grid"},
            pruner={"name": "asha", "min_epochs": 1, "reduction_factor": 2},
            max_trials=6,
        )
        study = run_study(client, auth, scheduler, workers, body)
        trials = trials_of(client, auth, study["id"])
        pruned = [t for t in trials if t["state"] == "pruned"]
        assert pruned, trials
        for trial in pruned:
            assert trial["epochs_completed"] < 6
            assert "asha" in trial["reason"]
            job = client.get(f"/v1/jobs/{trial['job_id']}", headers=auth).json()
            assert job["status"] == "pruned" and job["pruned_reason"] == trial["reason"]
        assert workers.epochs_trained < 6 * 6


class TestConfirm:
    def test_without_refit_the_top_configurations_are_rerun_with_new_seeds(
        self, client, auth, scheduler, workers
    ):
        # As a study stored before refit runs them (refit runs: test_study_warm_starts.py).
        body = study_body(max_trials=4, confirm={"top_k": 2, "seeds": 2, "refit": False})
        study = run_study(client, auth, scheduler, workers, body)
        trials = trials_of(client, auth, study["id"])
        runs = [t for t in trials if t["confirms"] is not None]
        assert len(runs) == 4
        assert len(study["confirmed"]) == 2
        for config in study["confirmed"]:
            assert config["n"] == 3
            seeds = [
                t["seed"]
                for t in trials
                if t["number"] == config["trial"] or t["confirms"] == config["trial"]
            ]
            assert len(set(seeds)) == 3
        means = [c["mean"] for c in study["confirmed"]]
        assert means == sorted(means, reverse=True)


class TestCancel:
    def test_cancel_ends_every_trial_and_starts_none(self, client, auth, scheduler, dispatcher):
        body = study_body(max_parallel_trials=2)
        study_id = client.post("/v1/studies", json=body, headers=auth).json()["id"]
        scheduler.run_once()
        cancelled = client.post(f"/v1/studies/{study_id}/cancel", headers=auth)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        scheduler.run_once()
        trials = trials_of(client, auth, study_id)
        assert len(trials) == 2 and {t["state"] for t in trials} == {"cancelled"}
        assert len(dispatcher.sent) == 2
        assert client.post(f"/v1/studies/{study_id}/cancel", headers=auth).status_code == 409


class TestEvents:
    def test_the_stream_tells_each_trial_and_ends_with_the_study(
        self, client, auth, scheduler, workers
    ):
        study = run_study(client, auth, scheduler, workers, grid_body(max_trials=2))
        with client.stream("GET", f"/v1/studies/{study['id']}/events", headers=auth) as stream:
            body = "".join(stream.iter_text())
        events = [
            line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event:")
        ]
        assert events.count("trial_finished") == 2
        assert events.count("epoch") == 2
        assert events[-1] == "status"
        assert '"status": "succeeded"' in body


class TestCancelRace:
    def test_a_scheduler_that_read_the_study_before_its_cancel_stores_no_trial(
        self, client, auth, engine
    ):
        study_id = client.post("/v1/studies", json=study_body(), headers=auth).json()["id"]
        with Session(engine, expire_on_commit=False) as session:
            stale = session.get(Study, study_id)
        assert client.post(f"/v1/studies/{study_id}/cancel", headers=auth).status_code == 200
        with Session(engine) as session:
            assert stale is not None
            stored = add_infeasible_trial(session, stale, 0, {"batch_size": 64}, "x", {}, {})
        assert stored is None
        assert trials_of(client, auth, study_id) == []


class TestIsolation:
    def test_another_tenant_gets_404_on_every_study_route(self, client, keys: TenantKeys):
        mine, theirs = keys.headers("acme"), keys.headers("other")
        study_id = client.post("/v1/studies", json=study_body(), headers=mine).json()["id"]
        for method, path in [
            ("GET", f"/v1/studies/{study_id}"),
            ("GET", f"/v1/studies/{study_id}/trials"),
            ("GET", f"/v1/studies/{study_id}/events"),
            ("POST", f"/v1/studies/{study_id}/cancel"),
        ]:
            assert client.request(method, path, headers=theirs).status_code == 404, path
        assert client.get("/v1/studies", headers=theirs).json()["items"] == []
