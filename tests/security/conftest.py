"""The deployments of the hostile tests (tests/security/deployment.py), each on a copy of one
migrated SQLite file with an artifact root of its own."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.auth.rate_limit import RateLimiter
from api.core.migrations import upgrade
from api.main import create_app
from shared.settings import Settings
from tests.security.deployment import WORKER_TOKEN, Deployment, MakeDeployment
from tests.unit.api.recording_dispatcher import RecordingDispatcher


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database brought to head by the migrations; each test gets a copy."""
    path = tmp_path_factory.mktemp("migrated") / "tunelab.db"
    upgrade(f"sqlite:///{path}")
    return path


def copy_database(source: Path, target: Path) -> None:
    # The backup API copies a consistent database, whatever is still in its WAL file.
    original, copy = sqlite3.connect(source), sqlite3.connect(target)
    try:
        original.backup(copy)
    finally:
        copy.close()
        original.close()


@pytest.fixture
def make_deployment(tmp_path: Path, migrated_database: Path) -> Iterator[MakeDeployment]:
    """Starts an API with the given settings overrides and optionally a rate limiter; with
    `same_database_as`, a second API process of that deployment (same database and root)."""
    made: list[Deployment] = []

    def make(
        rate_limiter: RateLimiter | None = None,
        same_database_as: Deployment | None = None,
        **overrides: Any,
    ) -> Deployment:
        if same_database_as is not None:
            settings = same_database_as.settings.model_copy(update=overrides)
        else:
            folder = tmp_path / f"deployment-{len(made)}"
            folder.mkdir()
            database = folder / "tunelab.db"
            copy_database(migrated_database, database)
            settings = Settings(
                **{
                    "database_url": f"sqlite:///{database}",
                    "broker_url": "memory://",
                    "broker_folder": folder / "broker",
                    "data_dir": folder / "data",
                    "artifact_dir": folder / "artifacts",
                    "worker_token": WORKER_TOKEN,
                    "sweep_seconds": 0,
                    **overrides,
                }
            )
            settings.artifact_dir.mkdir()
        dispatcher = RecordingDispatcher()
        app = create_app(settings, dispatcher=dispatcher, rate_limiter=rate_limiter)
        client = TestClient(app, raise_server_exceptions=False)
        deployment = Deployment(app, client, settings, dispatcher)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.client.close()
        deployment.app.state.rate_limiter.close()
        deployment.engine.dispose()


@pytest.fixture
def deployment(make_deployment: MakeDeployment) -> Deployment:
    return make_deployment()
