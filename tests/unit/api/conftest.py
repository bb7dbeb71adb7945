from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel

from api.auth.keys import create_key
from api.core.db import make_engine
from api.main import create_app
from shared.settings import Settings


@dataclass
class RecordingDispatcher:
    """Stands in for the broker: records the job ids it was asked to send."""

    sent: list[str] = field(default_factory=list)
    broken: bool = False

    def send(self, job_id: str) -> bool:
        if self.broken:
            return False
        self.sent.append(job_id)
        return True

    def ping(self) -> None:
        if self.broken:
            raise ConnectionError("broker down")


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


@dataclass
class TenantKeys:
    engine: Engine

    def headers(self, tenant: str = "acme") -> dict[str, str]:
        with Session(self.engine) as session:
            _, key = create_key(session, tenant)
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys(engine: Engine) -> TenantKeys:
    return TenantKeys(engine)


@pytest.fixture
def auth(keys: TenantKeys) -> dict[str, str]:
    return keys.headers("acme")


@pytest.fixture
def worker_auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.worker_token}"}
