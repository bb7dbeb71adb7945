from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import SQLModel

from api.core.db import make_engine
from api.main import create_app
from api.studies.scheduler import StudyScheduler
from shared.settings import Settings
from tests.unit.api.recording_dispatcher import RecordingDispatcher
from tests.unit.api.tenant_keys import TenantKeys


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    # A fresh in-memory database per test.
    engine = make_engine(settings.database_url)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def client(settings: Settings, engine: Engine, dispatcher: RecordingDispatcher) -> TestClient:
    return TestClient(create_app(settings, engine=engine, dispatcher=dispatcher))


@pytest.fixture
def keys(engine: Engine) -> TenantKeys:
    return TenantKeys(engine)


@pytest.fixture
def auth(keys: TenantKeys) -> dict[str, str]:
    return keys.headers("acme")


@pytest.fixture
def worker_auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.worker_token}"}


@pytest.fixture
def scheduler(
    engine: Engine, dispatcher: RecordingDispatcher, settings: Settings
) -> StudyScheduler:
    """The study scheduler over the test's database, its passes run by the test."""
    return StudyScheduler(engine, dispatcher, settings)
