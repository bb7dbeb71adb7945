"""A real Tunelab API for hostile tests: create_app on a migrated SQLite file, its own
artifact root, and helpers that play tenants and a worker."""

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.auth.keys import create_key
from api.auth.rate_limit import RateLimiter
from api.core.migrations import upgrade
from api.main import create_app
from shared.settings import Settings
from tests.unit.api.conftest import RecordingDispatcher
from tests.unit.api.worker_calls import WorkerCalls, checkpoint_record

WORKER_TOKEN = "security-worker-token"
QUICK_JOB = {"epochs": 2, "data": {"train_subset": 256, "test_subset": 64}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Deployment:
    """One API, its database and artifact root; tenants and a worker talk to it."""

    app: FastAPI
    client: TestClient
    settings: Settings
    dispatcher: RecordingDispatcher
    keys_made: list[str] = field(default_factory=list)

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine

    @property
    def artifact_root(self) -> Path:
        return self.settings.artifact_dir

    @property
    def worker(self) -> WorkerCalls:
        return WorkerCalls(self.client, bearer(WORKER_TOKEN))

    def new_key(self, tenant: str) -> str:
        with Session(self.engine) as session:
            _, key = create_key(session, tenant)
        self.keys_made.append(key)
        return key

    def tenant(self, name: str) -> dict[str, str]:
        """Headers carrying a new key of tenant `name`."""
        return bearer(self.new_key(name))

    def submit(self, headers: dict[str, str], body: dict[str, Any] | None = None) -> dict:
        response = self.client.post(
            "/v1/jobs", json=QUICK_JOB if body is None else body, headers=headers
        )
        assert response.status_code == 201, response.text
        job: dict = response.json()
        return job

    def trained_job(self, headers: dict[str, str], finish: bool = True) -> tuple[dict, str]:
        """A job with one epoch of metrics and a checkpoint file on disk; (job, checkpoint name)."""
        job = self.submit(headers)
        attempt = self.worker.attempt(job["id"])
        payload = b"checkpoint bytes of " + job["id"].encode()
        record = checkpoint_record(
            job["id"], 0, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload)
        )
        path = self.artifact_root / record["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        response = self.worker.post_epoch(job["id"], attempt, 0, checkpoint=record)
        assert response.status_code == 200, response.text
        if finish:
            assert self.worker.finish(job["id"], attempt).status_code == 200
        return job, record["name"]

    def send_raw(self, method: str, raw_path: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """Sends a path exactly as given, `../` and all, the way `curl --path-as-is` does;
        HTTP clients normalise such paths before they leave."""
        return anyio.run(_asgi_request, self.app, method, raw_path, headers)


async def _asgi_request(
    app: FastAPI, method: str, raw_path: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    path, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        # As uvicorn builds it: the path percent-decoded, the raw path kept.
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    status = 0
    body = b""
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if request_sent:
            return {"type": "http.disconnect"}
        request_sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await app(scope, receive, send)
    return status, body


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


MakeDeployment = Callable[..., Deployment]


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
