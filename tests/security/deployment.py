"""A real Tunelab API for hostile tests: create_app on a migrated SQLite file, its own
artifact root, and helpers that play tenants and a worker."""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.auth.keys import create_key
from shared.settings import Settings
from tests.unit.api.recording_dispatcher import RecordingDispatcher
from tests.unit.api.tenant_calls import submit
from tests.unit.api.worker_calls import WorkerCalls, checkpoint_record

WORKER_TOKEN = "security-worker-token"


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
        return submit(self.client, headers, body)

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


# Starts a deployment: see the make_deployment fixture.
MakeDeployment = Callable[..., Deployment]
