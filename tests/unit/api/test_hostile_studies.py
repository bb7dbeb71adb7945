"""Studies a client can submit that the scheduler cannot run, and the scheduler's work that a
tenant's studies cost: every sampled spec is a trial or an infeasible one with its reason, a
study that keeps failing ends, each tenant has a limit of active studies, and a study that
waits for the tenant's job slots never asks its sampler."""

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.core.models import Study
from api.main import create_app
from api.studies import scheduler as scheduler_module
from api.studies.optuna_bridge import trial_seed
from api.studies.scheduler import FAILED_PASSES_TO_END, StudyScheduler
from shared.settings import Settings
from tests.unit.api.recording_dispatcher import RecordingDispatcher
from tests.unit.api.tenant_calls import PROBLEM, submit
from tests.unit.api.tenant_keys import TenantKeys
from tests.unit.api.worker_calls import WorkerCalls

MAX_INT32 = 2**31 - 1
QUICK_BASE = {"epochs": 2, "data": {"train_subset": 256, "test_subset": 64}}
ENDED = {"succeeded", "failed", "cancelled"}
# Scheduler passes a test allows a study to end in: far more than any needs.
PASSES = 40


def study_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "base": QUICK_BASE,
        "space": {"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}},
        "sampler": {"name": "random", "seed": 1},
        "max_trials": 2,
    }
    return {**body, **fields}


def app_with(
    settings: Settings, engine: Engine, dispatcher: RecordingDispatcher, **limits: Any
) -> TestClient:
    return TestClient(
        create_app(settings.model_copy(update=limits), engine=engine, dispatcher=dispatcher)
    )


def create(client: TestClient, auth: dict[str, str], body: dict[str, Any]) -> str:
    response = client.post("/v1/studies", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def study_of(client: TestClient, auth: dict[str, str], study_id: str) -> dict[str, Any]:
    return client.get(f"/v1/studies/{study_id}", headers=auth).json()


def trials_of(client: TestClient, auth: dict[str, str], study_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/studies/{study_id}/trials", headers=auth).json()["items"]


def train_queued(calls: WorkerCalls, dispatcher: RecordingDispatcher, done: set[str]) -> None:
    """Plays the worker: every job sent and not yet trained succeeds, epoch by epoch,
    validating on the images its study holds out."""
    for job_id in [job_id for job_id in dispatcher.sent if job_id not in done]:
        done.add(job_id)
        attempt = calls.attempt(job_id)
        for epoch in range(QUICK_BASE["epochs"]):
            calls.post_epoch(job_id, attempt, epoch, val_accuracy=0.9, val_loss=0.3)
        calls.finish(job_id, attempt)


def until_ended(
    client: TestClient,
    auth: dict[str, str],
    study_id: str,
    one_pass: Callable[[], object],
) -> dict[str, Any]:
    """Runs scheduler passes until the study ends; fails if it has not after PASSES."""
    for _ in range(PASSES):
        one_pass()
        study = study_of(client, auth, study_id)
        if study["status"] in ENDED:
            return study
    raise AssertionError(f"the study did not end in {PASSES} passes: {study}")


class TestSpecsNoSpecCanBuild:
    def test_a_path_an_earlier_choice_removes_makes_infeasible_trials_and_the_study_ends(
        self, client, auth, scheduler
    ):
        body = study_body(
            base={**QUICK_BASE, "epochs": 3, "schedule": {"name": "multistep", "milestones": [1]}},
            space={
                "schedule": {
                    "type": "categorical",
                    "choices": [{"name": "step", "step_size": 1}, {"name": "constant"}],
                },
                "schedule.milestones[0]": {"type": "int", "low": 1, "high": 2},
            },
            max_trials=3,
        )
        study_id = create(client, auth, body)
        study = until_ended(client, auth, study_id, scheduler.run_once)
        assert study["status"] == "failed"
        assert study["error"]["type"] == "no_trial_succeeded"
        trials = trials_of(client, auth, study_id)
        assert [t["state"] for t in trials] == ["infeasible"] * 3
        assert all("schedule.milestones" in t["reason"] for t in trials)

    def test_confirmation_seeds_past_the_largest_seed_wrap_round(
        self, client, auth, worker_auth, scheduler, dispatcher
    ):
        body = study_body(
            base={**QUICK_BASE, "seed": MAX_INT32}, max_trials=1, confirm={"top_k": 1, "seeds": 2}
        )
        study_id = create(client, auth, body)
        calls, done = WorkerCalls(client, worker_auth), set[str]()

        def one_pass() -> None:
            scheduler.run_once()
            train_queued(calls, dispatcher, done)

        study = until_ended(client, auth, study_id, one_pass)
        assert study["status"] == "succeeded", study
        assert [t["seed"] for t in trials_of(client, auth, study_id)] == [MAX_INT32, 0, 1]
        # Refit: the two runs on every training image (the search trial held images out).
        assert study["confirmed"][0]["n"] == 2


class TestAStudyThatKeepsFailing:
    @pytest.fixture
    def broken_sampler(self, monkeypatch) -> list[int]:
        """Every ask of the sampler raises; the list counts the asks."""
        asks: list[int] = []

        def ask(*_: object, **__: object) -> None:
            asks.append(1)
            raise RuntimeError("the sampler broke")

        monkeypatch.setattr(scheduler_module, "ask", ask)
        return asks

    def test_ends_failed_with_the_error_counting_across_a_restart(
        self, client, auth, engine, dispatcher, settings, broken_sampler
    ):
        study_id = create(client, auth, study_body())
        first = StudyScheduler(engine, dispatcher, settings)
        for _ in range(FAILED_PASSES_TO_END - 1):
            first.run_once()
        assert study_of(client, auth, study_id)["status"] == "queued"
        first.stop()  # as a restarted API's scheduler does, the next counts on
        second = StudyScheduler(engine, dispatcher, settings)
        second.run_once()
        study = study_of(client, auth, study_id)
        assert study["status"] == "failed"
        assert study["error"]["type"] == "scheduling_failed"
        assert "RuntimeError: the sampler broke" in study["error"]["message"]
        assert f"{FAILED_PASSES_TO_END} times in a row" in study["error"]["message"]
        second.run_once()
        assert len(broken_sampler) == FAILED_PASSES_TO_END

    def test_a_pass_that_succeeds_starts_the_count_again(
        self, client, auth, engine, scheduler, monkeypatch
    ):
        study_id = create(client, auth, study_body(max_trials=5, max_parallel_trials=5))
        real_trials = scheduler_module.study_trials
        failing = True

        def sometimes(*args: Any) -> Any:
            if failing:
                raise RuntimeError("once in a while")
            return real_trials(*args)

        monkeypatch.setattr(scheduler_module, "study_trials", sometimes)
        for _ in range(FAILED_PASSES_TO_END - 1):
            scheduler.run_once()
        failing = False
        scheduler.run_once()
        failing = True
        for _ in range(FAILED_PASSES_TO_END - 1):
            scheduler.run_once()
        assert study_of(client, auth, study_id)["status"] == "running"
        with Session(engine) as session:
            stored = session.get(Study, study_id)
            assert stored is not None and stored.scheduling_failures == FAILED_PASSES_TO_END - 1

    def test_a_cancel_is_never_overturned(self, client, auth, scheduler, monkeypatch):
        study_id = create(client, auth, study_body())
        passes = 0

        def cancel_then_break(*_: object, **__: object) -> None:
            nonlocal passes
            passes += 1
            if passes == FAILED_PASSES_TO_END:
                # The cancel lands while the last failing pass is under way.
                assert client.post(f"/v1/studies/{study_id}/cancel", headers=auth).is_success
            raise RuntimeError("the sampler broke")

        monkeypatch.setattr(scheduler_module, "ask", cancel_then_break)
        for _ in range(FAILED_PASSES_TO_END):
            scheduler.run_once()
        study = study_of(client, auth, study_id)
        assert study["status"] == "cancelled" and study["error"] is None


class TestOversizedStoredGrid:
    def test_a_grid_stored_under_a_higher_limit_fails_without_being_listed(
        self, settings, engine, dispatcher, keys: TenantKeys
    ):
        space = {
            "seed": {"type": "int", "low": 0, "high": 9_999},
            "batch_size": {"type": "int", "low": 1, "high": 300},
        }
        body = study_body(space=space, sampler={"name": "grid"}, max_trials=3)
        generous = app_with(settings, engine, dispatcher, max_grid_points=10**7)
        auth = keys.headers("acme")
        study_id = create(generous, auth, body)
        scheduler = StudyScheduler(engine, dispatcher, settings)  # 100,000 points at most
        tracemalloc.start()
        try:
            scheduler.run_once()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        study = study_of(generous, auth, study_id)
        assert study["status"] == "failed"
        assert study["error"]["type"] == "grid_too_large"
        assert "3,000,000 points" in study["error"]["message"]
        assert peak < 20_000_000
        assert dispatcher.sent == []


class TestActiveStudiesLimit:
    def test_one_more_than_the_limit_is_a_429_until_one_ends(
        self, settings, engine, dispatcher, keys: TenantKeys
    ):
        client = app_with(settings, engine, dispatcher, max_active_studies=2)
        auth, other = keys.headers("acme"), keys.headers("globex")
        first = create(client, auth, study_body(name="first"))
        create(client, {**auth, "Idempotency-Key": "second"}, study_body(name="second"))

        refused = client.post("/v1/studies", json=study_body(name="third"), headers=auth)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == PROBLEM
        assert int(refused.headers["Retry-After"]) >= 1
        problem = refused.json()
        assert problem["active_studies"] == 2 and problem["limit"] == 2
        assert "2 queued or running studies" in problem["detail"]

        # A replay is no new study; another tenant has limits of its own.
        replay = client.post(
            "/v1/studies",
            json=study_body(name="second"),
            headers={**auth, "Idempotency-Key": "second"},
        )
        assert replay.status_code == 200
        create(client, other, study_body(name="theirs"))

        assert client.post(f"/v1/studies/{first}/cancel", headers=auth).is_success
        create(client, auth, study_body(name="third"))


class TestWaitingForJobSlots:
    def test_a_study_without_a_free_slot_never_asks_its_sampler(
        self, settings, engine, dispatcher, keys: TenantKeys, monkeypatch
    ):
        client = app_with(settings, engine, dispatcher, max_concurrent_jobs=1)
        auth = keys.headers("acme")
        holder = submit(client, auth)  # the tenant's only slot
        studies = [create(client, auth, study_body(name=f"s{n}")) for n in range(5)]
        asks: list[str] = []
        real_ask = scheduler_module.ask

        def counted(study_id: str, *args: Any, **kwargs: Any) -> Any:
            asks.append(study_id)
            return real_ask(study_id, *args, **kwargs)

        monkeypatch.setattr(scheduler_module, "ask", counted)
        scheduler = StudyScheduler(
            engine, dispatcher, settings.model_copy(update={"max_concurrent_jobs": 1})
        )
        for _ in range(3):
            scheduler.run_once()
        assert asks == []
        assert all(study_of(client, auth, s)["status"] == "queued" for s in studies)

        assert client.post(f"/v1/jobs/{holder['id']}/cancel", headers=auth).is_success
        scheduler.run_once()
        assert asks == [studies[0]]
        assert study_of(client, auth, studies[0])["trials"]["queued"] == 1


class TestTrialSeeds:
    @pytest.mark.parametrize("study_seed", [0, 1, 12345, MAX_INT32])
    def test_each_trial_has_an_unrelated_seed_within_31_bits(self, study_seed):
        seeds = [trial_seed(study_seed, number) for number in range(500)]
        assert all(0 <= seed <= MAX_INT32 for seed in seeds)
        assert len(set(seeds)) == len(seeds)
        steps = {later - earlier for earlier, later in zip(seeds, seeds[1:], strict=False)}
        assert len(steps) > 400  # not a sequence with a constant step
        assert seeds == [trial_seed(study_seed, number) for number in range(500)]

    def test_neighbouring_study_seeds_share_no_trial_seeds(self):
        assert not {trial_seed(1, n) for n in range(500)} & {trial_seed(2, n) for n in range(500)}
