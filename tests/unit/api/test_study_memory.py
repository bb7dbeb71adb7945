"""What an API process remembers of a study between decisions (api/studies/study_memory.py)
against the ledger: a study runs the same remembered as rebuilt for every decision, and the
trials it reads are the ledger's, as they change and when the ledger says otherwise than
what was kept."""

from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session

from api.core.models import Job, Study
from api.studies.reads import TrialView, study_trials
from api.studies.study_memory import MEMORY, StudyMemory
from tests.unit.api.study_calls import Workers, run_study, study_body, trials_of
from tests.unit.api.worker_calls import WorkerCalls

TPE_ASHA = study_body(
    sampler={"name": "tpe", "seed": 4, "n_startup_trials": 2},
    pruner={"name": "asha", "min_epochs": 1, "reduction_factor": 2},
    max_trials=8,
    max_parallel_trials=2,
)


@pytest.fixture
def workers(client, worker_auth, dispatcher) -> Workers:
    return Workers(client, worker_auth, dispatcher)


def described(views: list[TrialView]) -> list[tuple[Any, ...]]:
    return [
        (
            view.number,
            view.state,
            view.row.params,
            view.row.system_attrs,
            view.row.job_id,
            view.job.status if view.job else None,
            view.metrics,
        )
        for view in views
    ]


def test_a_study_runs_the_same_remembered_as_rebuilt(client, auth, scheduler, workers, monkeypatch):
    runs = []
    for remember in (False, True):
        monkeypatch.setattr(MEMORY, "remember", remember)
        study = run_study(client, auth, scheduler, workers, TPE_ASHA)
        trials = trials_of(client, auth, study["id"])
        runs.append([(t["number"], t["params"], t["state"], t["epochs_completed"]) for t in trials])
    rebuilt, remembered = runs
    assert remembered == rebuilt
    assert {state for _, _, state, _ in remembered} == {"succeeded", "pruned"}


def test_the_trials_read_are_the_ledger_s_as_it_changes(
    client, auth, worker_auth, engine, scheduler, dispatcher
):
    study_id = client.post("/v1/studies", json=TPE_ASHA, headers=auth).json()["id"]
    memory, worker = StudyMemory(), WorkerCalls(client, worker_auth)

    def read_both() -> list[TrialView]:
        with Session(engine) as session:
            study = session.get(Study, study_id)
            assert study is not None
            remembered = memory.trial_views(session, study)
            assert described(remembered) == described(study_trials(session, study))
            return remembered

    scheduler.run_once()
    assert [view.state for view in read_both()] == ["queued", "queued"]
    first, second = dispatcher.sent
    attempt = worker.attempt(first)
    worker.post_epoch(first, attempt, 0, val_accuracy=0.5)
    assert [len(view.metrics.get("val_accuracy", {})) for view in read_both()] == [1, 0]
    worker.post_epoch(first, attempt, 1, val_accuracy=0.6)
    worker.post_epoch(first, attempt, 2, val_accuracy=0.7)
    worker.finish(first, attempt)
    ended = read_both()[0]
    assert ended.state == "succeeded"
    # Kept once ended: read again, it is the view kept, not read again.
    assert read_both()[0] is read_both()[0]
    cancelled = client.post(f"/v1/jobs/{second}/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    scheduler.run_once()
    assert [view.state for view in read_both()] == ["succeeded", "cancelled", "queued", "queued"]
    # What the service never does, an ended job running again: the ledger says otherwise
    # than what was kept, and everything is read again.
    with Session(engine) as session:
        session.execute(update(Job).where(Job.id == first).values(status="running"))  # type: ignore[arg-type]
        session.commit()
    assert read_both()[0].state == "running"
