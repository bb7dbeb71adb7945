"""A study's stored spec is parsed once per loaded row, however many steps read it."""

from typing import Any

import pytest
from sqlalchemy import Engine

from api.studies.scheduler import StudyScheduler
from shared.settings import Settings
from shared.study_spec import StudySpec

STUDY = {
    "name": "parsed-once",
    "base": {"epochs": 2, "data": {"train_subset": 256, "test_subset": 64}},
    "space": {"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}},
    "sampler": {"name": "random", "seed": 1},
    "max_trials": 2,
}


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every StudySpec.model_validate call from here on."""
    calls: list[Any] = []
    validate = StudySpec.model_validate

    def counted(obj: Any, *args: Any, **kwargs: Any) -> StudySpec:
        calls.append(obj)
        return validate(obj, *args, **kwargs)

    monkeypatch.setattr(StudySpec, "model_validate", counted)
    return calls


class TestStudySpecParsing:
    def test_reading_a_study_parses_its_spec_once(self, client, auth, parses):
        study_id = client.post("/v1/studies", json=STUDY, headers=auth).json()["id"]
        parses.clear()
        for path in (f"/v1/studies/{study_id}", f"/v1/studies/{study_id}/trials"):
            parses.clear()
            assert client.get(path, headers=auth).status_code == 200
            assert len(parses) == 1, path

    def test_a_scheduler_pass_parses_each_study_once(
        self, client, auth, engine: Engine, dispatcher, settings: Settings, parses
    ):
        client.post("/v1/studies", json=STUDY, headers=auth)
        client.post("/v1/studies", json={**STUDY, "name": "another"}, headers=auth)
        parses.clear()
        assert StudyScheduler(engine, dispatcher, settings).run_once()
        assert len(parses) == 2
        assert len(dispatcher.sent) == 2  # one trial each: max_parallel_trials is 1
