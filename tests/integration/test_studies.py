"""Studies on real processes: uvicorn, a Celery worker training real trials, PostgreSQL and
Redis (and the grid once on the embedded default)."""

from typing import Any

import httpx
import pytest

from testbed.stack import Stack, wait_until
from tests.figures import figure

pytestmark = pytest.mark.integration

# Synthetic MNIST has 2,000 training images: a study's default of 10,000 held out would not
# fit, so each base holds 200 out to validate on.
BASE = {
    "epochs": 3,
    "batch_size": 64,
    "data": {"train_subset": 512, "test_subset": 200, "validation": 200},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "constant"},
}
ENDED = {"succeeded", "failed", "cancelled"}


def create(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/studies", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_study(client: httpx.Client, study_id: str, timeout: float = 300) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        try:
            study = client.get(f"/v1/studies/{study_id}").json()
        except httpx.TransportError:
            return None  # the API is restarting
        return study if study["status"] in ENDED else None

    return wait_until(ended, timeout, f"study {study_id} to end", interval=0.5)


def trials(client: httpx.Client, study_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/studies/{study_id}/trials").json()["items"]


def each_trial_ran_once(rows: list[dict[str, Any]], max_trials: int) -> None:
    """Trials 0 to max_trials - 1, each its own job, all succeeded: none lost, none twice."""
    assert [t["number"] for t in rows] == list(range(max_trials))
    assert len({t["job_id"] for t in rows}) == max_trials
    assert {t["state"] for t in rows} == {"succeeded"}


def test_a_grid_runs_exactly_its_four_specs(stack: Stack):
    with stack.client(stack.create_key()) as client:
        study = create(
            client,
            {
                "name": "grid",
                "base": BASE,
                "space": {
                    "batch_size": {"type": "categorical", "choices": [32, 64]},
                    "optimizer.lr": {"type": "categorical", "choices": [0.02, 0.05]},
                },
                "sampler": {"name": "grid", "seed": 1},
                "max_trials": 10,
                "max_parallel_trials": 2,
            },
        )
        done = wait_for_study(client, study["id"])
        assert done["status"] == "succeeded", stack.logs()
        rows = trials(client, study["id"])
        assert sorted((t["params"]["batch_size"], t["params"]["optimizer.lr"]) for t in rows) == [
            (32, 0.02),
            (32, 0.05),
            (64, 0.02),
            (64, 0.05),
        ]
        for trial in rows:
            job = client.get(f"/v1/jobs/{trial['job_id']}").json()
            assert job["status"] == "succeeded" and job["attempts"] == 1
            assert (job["study_id"], job["trial"]) == (study["id"], trial["number"])
            assert job["spec"]["batch_size"] == trial["params"]["batch_size"]
            assert job["spec"]["optimizer"]["lr"] == trial["params"]["optimizer.lr"]
            assert job["progress"]["epochs_completed"] == 3
        assert done["trials"]["succeeded"] == 4
        assert done["best"]["value"] == max(t["value"] for t in rows)


def test_hopeless_learning_rates_are_pruned_before_their_last_epoch(production_stack: Stack):
    stack = production_stack
    with stack.client(stack.create_key()) as client:
        study = create(
            client,
            {
                "name": "prune",
                "base": {**BASE, "epochs": 4},
                # Seed 1 samples 0.08 first, then 2e-3, 1e-5, 6e-4, 0.04 and 2e-7: the
                # hopeless ones come after a good one, for ASHA to compare them with.
                "space": {"optimizer.lr": {"type": "float", "low": 1e-7, "high": 0.1, "log": True}},
                "sampler": {"name": "random", "seed": 1},
                "pruner": {"name": "asha", "min_epochs": 1, "reduction_factor": 2},
                "max_trials": 6,
            },
        )
        done = wait_for_study(client, study["id"])
        assert done["status"] == "succeeded", stack.logs()
        rows = trials(client, study["id"])
        pruned = [t for t in rows if t["state"] == "pruned"]
        figure(
            f"[studies] asha: {len(pruned)} of {len(rows)} trials pruned, after "
            f"{[t['epochs_completed'] for t in pruned]} of 4 epochs"
        )
        assert pruned, rows
        best_lr = done["best"]["params"]["optimizer.lr"]
        for trial in pruned:
            assert trial["params"]["optimizer.lr"] < best_lr
            job = client.get(f"/v1/jobs/{trial['job_id']}").json()
            assert job["status"] == "pruned"
            assert job["progress"]["epochs_completed"] < 4
            assert "asha" in job["pruned_reason"]
            metrics = client.get(f"/v1/jobs/{trial['job_id']}/metrics").json()["items"]
            assert len(metrics) == job["progress"]["epochs_completed"]


def test_an_infeasible_trial_never_reaches_a_worker(production_stack: Stack):
    stack = production_stack
    with stack.client(stack.create_key()) as client:
        study = create(
            client,
            {
                "name": "constrained",
                "base": {**BASE, "epochs": 1},
                "space": {
                    "model.layers[1].out_channels": {"type": "categorical", "choices": [16, 96]}
                },
                "sampler": {"name": "grid"},
                "constraints": {"max_parameters": 9000},
            },
        )
        done = wait_for_study(client, study["id"])
        rows = {t["params"]["model.layers[1].out_channels"]: t for t in trials(client, study["id"])}
        assert rows[96]["state"] == "infeasible" and rows[96]["job_id"] is None
        assert "max_parameters" in rows[96]["reason"]
        assert rows[16]["state"] == "succeeded"
        jobs = client.get("/v1/jobs", params={"limit": 100}).json()["items"]
        # Only the feasible trial became a job; the worker never saw the other.
        assert [job["trial"] for job in jobs] == [rows[16]["number"]]
        assert done["trials"] == {**done["trials"], "total": 2, "infeasible": 1, "succeeded": 1}


def test_an_api_killed_mid_study_resumes_it_without_losing_or_repeating_a_trial(
    production_stack: Stack,
):
    stack = production_stack
    max_trials = 6
    with stack.client(stack.create_key()) as client:
        study = create(
            client,
            {
                "name": "restart",
                "base": {**BASE, "epochs": 2},
                "space": {
                    "optimizer.lr": {"type": "float", "low": 0.005, "high": 0.1, "log": True}
                },
                "sampler": {"name": "tpe", "seed": 5, "n_startup_trials": 2},
                "max_trials": max_trials,
                "max_parallel_trials": 2,
            },
        )
        wait_until(
            lambda: client.get(f"/v1/studies/{study['id']}").json()["trials"]["succeeded"] >= 2,
            180,
            "two finished trials",
        )
        stack.api.kill()
        stack.start_api()
        done = wait_for_study(client, study["id"])
        rows = trials(client, study["id"])
        figure(
            f"[studies] API killed after 2 finished trials and restarted: {len(rows)} trials "
            f"(max_trials {max_trials}), {len({t['job_id'] for t in rows})} distinct jobs, "
            f"status {done['status']}"
        )
        assert done["status"] == "succeeded", stack.logs()
        each_trial_ran_once(rows, max_trials)
        jobs = client.get("/v1/jobs", params={"limit": 100}).json()["items"]
        assert len(jobs) == max_trials


def test_cancel_ends_every_trial_and_starts_no_other(production_stack: Stack):
    stack = production_stack
    with stack.client(stack.create_key()) as client:
        study = create(
            client,
            {
                "name": "cancel",
                "base": {**BASE, "epochs": 30},
                "space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                "sampler": {"name": "random", "seed": 2},
                "max_trials": 5,
                "max_parallel_trials": 2,
            },
        )
        wait_until(
            lambda: client.get(f"/v1/studies/{study['id']}").json()["trials"]["running"] >= 1,
            120,
            "a running trial",
        )
        cancelled = client.post(f"/v1/studies/{study['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        rows = trials(client, study["id"])
        assert len(rows) == 2 and {t["state"] for t in rows} == {"cancelled"}
        # Nothing new starts, and the running trial's worker stops: it takes the next job.
        follow_up = client.post("/v1/jobs", json={**BASE, "epochs": 1}).json()["id"]
        wait_until(
            lambda: client.get(f"/v1/jobs/{follow_up}").json()["status"] == "succeeded",
            120,
            "the job after the cancelled study",
        )
        assert len(trials(client, study["id"])) == 2
        for trial in rows:
            assert client.get(f"/v1/jobs/{trial['job_id']}").json()["status"] == "cancelled"


def test_another_tenant_gets_404_on_every_study_route(production_stack: Stack):
    stack = production_stack
    with (
        stack.client(stack.create_key("owner")) as owner,
        stack.client(stack.create_key("stranger")) as stranger,
    ):
        study = create(
            owner,
            {
                "base": {**BASE, "epochs": 1},
                "space": {"batch_size": {"type": "categorical", "choices": [32]}},
                "sampler": {"name": "grid"},
            },
        )
        for method, path in [
            ("GET", f"/v1/studies/{study['id']}"),
            ("GET", f"/v1/studies/{study['id']}/trials"),
            ("GET", f"/v1/studies/{study['id']}/events"),
            ("POST", f"/v1/studies/{study['id']}/cancel"),
        ]:
            assert stranger.request(method, path).status_code == 404, path
        assert stranger.get("/v1/studies").json()["items"] == []
        wait_for_study(owner, study["id"])


def test_two_api_processes_schedule_one_study_once(production_stack: Stack):
    """Both processes run a scheduler; the lease lets one at a time add trials."""
    stack = production_stack
    second = Stack(stack.workdir / "second", stack.database_url, stack.broker_url, stack.queue)
    second.workdir.mkdir()
    try:
        second.start_api()
        key = stack.create_key()
        max_trials = 6
        with stack.client(key) as first_client, second.client(key) as second_client:
            study = create(
                second_client,
                {
                    "name": "two-apis",
                    "base": {**BASE, "epochs": 1},
                    "space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                    "sampler": {"name": "random", "seed": 4},
                    "max_trials": max_trials,
                    "max_parallel_trials": 3,
                },
            )
            done = wait_for_study(first_client, study["id"])
            rows = trials(second_client, study["id"])
        assert done["status"] == "succeeded", stack.logs() + second.logs()
        each_trial_ran_once(rows, max_trials)
    finally:
        second.stop()
