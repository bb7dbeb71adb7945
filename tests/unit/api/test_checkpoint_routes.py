"""Checkpoints over HTTP: the worker's upload and download routes, the epoch post that
records an upload, and the tenant's download, against a folder store and an S3 one."""

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.artifacts.local import LocalStore
from api.artifacts.s3 import S3Store
from api.artifacts.store import ArtifactStore, StoredMeta
from api.main import create_app
from api.web.errors import StaleAttempt
from api.workers.uploads import Received, keep
from shared.messages import AttemptPost
from shared.settings import Settings
from tests.unit.api.recording_dispatcher import RecordingDispatcher
from tests.unit.api.tenant_calls import submit
from tests.unit.api.tenant_keys import TenantKeys
from tests.unit.api.worker_calls import WorkerCalls, checkpoint_record

NAME = "epoch-000.pt"
PAYLOAD = b"state dict bytes " * 100
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
LIMIT = 4096


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A small limit, so that going past it takes a few kilobytes.
    settings.max_checkpoint_bytes = LIMIT
    return settings


@pytest.fixture
def store(client: TestClient) -> ArtifactStore:
    store: ArtifactStore = client.app.state.store  # type: ignore[attr-defined]
    return store


@pytest.fixture
def worker(client: TestClient, worker_auth: dict[str, str]) -> WorkerCalls:
    return WorkerCalls(client, worker_auth)


@pytest.fixture
def running(client, auth, worker) -> tuple[str, dict[str, Any]]:
    """A job, and its attempt that holds it."""
    job_id = submit(client, auth)["id"]
    return job_id, worker.attempt(job_id)


class Consumed:
    """A request body that notes whether the server ever read it."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.read = False

    def __iter__(self) -> Iterator[bytes]:
        self.read = True
        yield self.payload


def put(
    client: TestClient, job_id: str, body: Any, headers: dict[str, str], name: str = NAME
) -> Any:
    return client.put(
        f"/internal/v1/jobs/{job_id}/checkpoints/{name}", content=body, headers=headers
    )


def upload_headers(attempt: dict[str, Any], worker_auth: dict[str, str], **extra: str) -> dict:
    return {
        **worker_auth,
        "X-Attempt": str(attempt["attempt"]),
        "X-Lease-Token": attempt["lease_token"],
        "X-Checkpoint-SHA256": SHA256,
        "Content-Length": str(len(PAYLOAD)),
        **extra,
    }


def staging_is_empty(store: ArtifactStore) -> bool:
    return list(store.staging_dir.iterdir()) == []


class TestUpload:
    def test_stores_the_file_under_the_job(self, worker, running, store):
        job_id, attempt = running
        response = worker.upload(job_id, attempt, NAME, PAYLOAD)
        assert response.status_code == 201, response.text
        assert response.json() == {"name": NAME, "sha256": SHA256, "bytes": len(PAYLOAD)}
        assert store.head(job_id, NAME) == StoredMeta(SHA256, len(PAYLOAD))
        assert staging_is_empty(store)

    def test_a_repeat_is_200_and_rewrites_nothing(self, worker, running, store, monkeypatch):
        job_id, attempt = running
        assert worker.upload(job_id, attempt, NAME, PAYLOAD).status_code == 201
        puts: list[str] = []
        monkeypatch.setattr(type(store), "put", lambda *args: puts.append("put"))
        repeat = worker.upload(job_id, attempt, NAME, PAYLOAD)
        assert repeat.status_code == 200
        assert repeat.json()["sha256"] == SHA256
        assert puts == []
        assert staging_is_empty(store)

    def test_a_body_that_does_not_match_its_sha256_is_422_naming_the_header(
        self, worker, running, store
    ):
        job_id, attempt = running
        response = worker.upload(job_id, attempt, NAME, PAYLOAD, X_Checkpoint_SHA256="0" * 64)
        assert response.status_code == 422
        problem = response.json()
        assert problem["type"] == "urn:tunelab:problem:checksum-mismatch"
        assert [error["field"] for error in problem["errors"]] == ['header["X-Checkpoint-SHA256"]']
        assert SHA256 in problem["errors"][0]["message"]
        assert store.head(job_id, NAME) is None
        assert staging_is_empty(store)

    def test_a_malformed_or_missing_sha256_is_422_before_the_body_is_read(
        self, client, running, worker_auth
    ):
        job_id, attempt = running
        headers = upload_headers(attempt, worker_auth, **{"X-Checkpoint-SHA256": "abc"})
        body = Consumed(PAYLOAD)
        response = put(client, job_id, body, headers)
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == 'header["X-Checkpoint-SHA256"]'
        assert not body.read

    def test_a_declared_size_over_the_limit_is_413_before_the_body_is_read(
        self, client, running, worker_auth, store
    ):
        job_id, attempt = running
        body = Consumed(b"x" * (LIMIT + 1))
        headers = upload_headers(attempt, worker_auth, **{"Content-Length": str(LIMIT + 1)})
        response = put(client, job_id, body, headers)
        assert response.status_code == 413
        assert str(LIMIT) in response.json()["detail"]
        assert not body.read
        assert store.head(job_id, NAME) is None

    def test_a_body_past_the_limit_is_413_even_when_its_content_length_says_less(
        self, client, running, worker_auth, store
    ):
        job_id, attempt = running
        oversized = b"x" * (LIMIT + 1)
        headers = upload_headers(
            attempt,
            worker_auth,
            **{
                "Content-Length": "10",
                "X-Checkpoint-SHA256": hashlib.sha256(oversized).hexdigest(),
            },
        )
        response = put(client, job_id, oversized, headers)
        assert response.status_code == 413
        assert store.head(job_id, NAME) is None
        assert staging_is_empty(store)

    def test_a_body_short_of_its_content_length_is_400(self, client, running, worker_auth, store):
        job_id, attempt = running
        headers = upload_headers(attempt, worker_auth, **{"Content-Length": str(len(PAYLOAD) + 5)})
        response = put(client, job_id, PAYLOAD, headers)
        assert response.status_code == 400
        assert "ended after" in response.json()["detail"]
        assert store.head(job_id, NAME) is None
        assert staging_is_empty(store)

    def test_a_file_of_exactly_the_limit_is_taken_past_the_request_body_limit(
        self, worker, running, store, settings
    ):
        # Bodies of every other route stop at max_request_bytes; the upload has its own.
        settings.max_checkpoint_bytes = 3 * settings.max_request_bytes
        job_id, attempt = running
        payload = b"w" * settings.max_checkpoint_bytes
        assert worker.upload(job_id, attempt, NAME, payload).status_code == 201
        assert store.head(job_id, NAME) == StoredMeta(
            hashlib.sha256(payload).hexdigest(), len(payload)
        )

    def test_another_attempts_upload_is_409_before_the_body_is_read(
        self, client, auth, worker, worker_auth, settings, store
    ):
        settings.lease_seconds = 0.001
        job_id = submit(client, auth)["id"]
        first = worker.attempt(job_id)
        worker.attempt(job_id)  # the lease ran out: attempt 2 holds the job now
        for stale in (first, {**first, "lease_token": "0" * 32}):
            body = Consumed(PAYLOAD)
            response = put(client, job_id, body, upload_headers(stale, worker_auth))
            assert response.status_code == 409
            assert response.json()["type"] == "urn:tunelab:problem:stale-attempt"
            assert not body.read
        assert store.head(job_id, NAME) is None

    def test_a_finished_jobs_attempt_cannot_upload(self, worker, running, store):
        job_id, attempt = running
        worker.finish(job_id, attempt)
        assert worker.upload(job_id, attempt, NAME, PAYLOAD).status_code == 409
        assert store.head(job_id, NAME) is None

    @pytest.mark.parametrize("credentials", ["none", "wrong", "tenant key"])
    def test_no_worker_token_is_401_before_the_body_is_read(
        self, client, running, worker_auth, auth, credentials
    ):
        job_id, attempt = running
        headers = upload_headers(attempt, worker_auth)
        headers["Authorization"] = {
            "none": "",
            "wrong": "Bearer wrong",
            "tenant key": auth["Authorization"],
        }[credentials]
        body = Consumed(PAYLOAD)
        response = put(client, job_id, body, headers)
        assert response.status_code == 401
        assert not body.read

    @pytest.mark.parametrize("name", [".hidden", "a%2Fb.pt", "..", "x" * 201])
    def test_a_name_that_is_not_a_plain_file_name_is_refused(self, worker, running, name):
        job_id, attempt = running
        response = worker.upload(job_id, attempt, name, PAYLOAD)
        assert response.status_code in (404, 422), name


class TestKeep:
    def test_an_attempt_that_lost_the_job_while_uploading_replaces_nothing(
        self, client, auth, worker, settings, store, tmp_path
    ):
        settings.lease_seconds = 0.001
        job_id = submit(client, auth)["id"]
        first = worker.attempt(job_id)
        worker.attempt(job_id)
        received = tmp_path / "received.partial"
        received.write_bytes(PAYLOAD)
        engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
        post = AttemptPost(attempt=first["attempt"], lease_token=first["lease_token"])
        with pytest.raises(StaleAttempt):
            keep(store, engine, job_id, post, NAME, Received(received, SHA256, len(PAYLOAD)))
        assert store.head(job_id, NAME) is None


class TestEpochRecords:
    def test_an_uploaded_checkpoint_is_recorded_by_its_epoch(self, client, auth, worker, running):
        job_id, attempt = running
        record = worker.uploaded_checkpoint(job_id, attempt, 0, PAYLOAD)
        assert worker.post_epoch(job_id, attempt, 0, checkpoint=record).status_code == 200
        items = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()["items"]
        assert [(item["name"], item["sha256"], item["bytes"]) for item in items] == [
            (NAME, SHA256, len(PAYLOAD))
        ]

    def test_a_record_of_a_file_never_uploaded_is_422_and_nothing_is_recorded(
        self, client, auth, worker, running
    ):
        job_id, attempt = running
        response = worker.post_epoch(job_id, attempt, 0, checkpoint=checkpoint_record(job_id, 0))
        assert response.status_code == 422
        assert response.json()["type"] == "urn:tunelab:problem:checkpoint-not-stored"
        assert client.get(f"/v1/jobs/{job_id}/metrics", headers=auth).json()["items"] == []

    def test_a_record_that_differs_from_the_stored_file_is_422(self, client, auth, worker, running):
        job_id, attempt = running
        record = worker.uploaded_checkpoint(job_id, attempt, 0, PAYLOAD)
        for lie in ({"sha256": "0" * 64}, {"bytes": record["bytes"] + 1}):
            response = worker.post_epoch(job_id, attempt, 0, checkpoint={**record, **lie})
            assert response.status_code == 422
            assert "is not the one recorded" in response.json()["detail"]
        assert client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()["items"] == []


class TestWorkerDownload:
    def test_a_recorded_checkpoint_downloads_with_its_sha256(self, worker, running):
        job_id, attempt = running
        record = worker.uploaded_checkpoint(job_id, attempt, 0, PAYLOAD)
        worker.post_epoch(job_id, attempt, 0, checkpoint=record)
        response = worker.download(job_id, NAME)
        assert response.status_code == 200
        assert response.content == PAYLOAD
        assert response.headers["x-checkpoint-sha256"] == SHA256
        assert response.headers["content-length"] == str(len(PAYLOAD))

    def test_an_upload_not_recorded_by_an_epoch_is_404(self, worker, running):
        job_id, attempt = running
        worker.uploaded_checkpoint(job_id, attempt, 0, PAYLOAD)
        response = worker.download(job_id, NAME)
        assert response.status_code == 404

    def test_a_recorded_file_gone_from_the_store_is_404(self, worker, running, store):
        job_id, attempt = running
        record = worker.uploaded_checkpoint(job_id, attempt, 0, PAYLOAD)
        worker.post_epoch(job_id, attempt, 0, checkpoint=record)
        store.delete_job(job_id)
        response = worker.download(job_id, NAME)
        assert response.status_code == 404

    def test_needs_the_worker_token(self, client, auth, worker, running):
        job_id, attempt = running
        record = worker.uploaded_checkpoint(job_id, attempt, 0, PAYLOAD)
        worker.post_epoch(job_id, attempt, 0, checkpoint=record)
        for headers in ({}, auth):
            url = f"/internal/v1/jobs/{job_id}/checkpoints/{NAME}"
            assert client.get(url, headers=headers).status_code == 401


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    (tmp_path / "staging").mkdir()
    return S3Store(server.client(), server.new_bucket(), "tunelab", tmp_path / "staging")


@pytest.fixture
def store_client(
    settings: Settings, engine: Engine, dispatcher: RecordingDispatcher, any_store: ArtifactStore
) -> TestClient:
    return TestClient(create_app(settings, engine=engine, dispatcher=dispatcher, store=any_store))


class TestTenantDownload:
    def test_streams_the_recorded_file_from_the_store(self, store_client, worker_auth, engine):
        client = store_client
        auth = TenantKeys(engine).headers()
        worker = WorkerCalls(client, worker_auth)
        job_id = submit(client, auth)["id"]
        attempt = worker.attempt(job_id)
        payload = bytes(range(256)) * 4096 * 3  # 3 MiB: more than one chunk
        client.app.state.settings.max_checkpoint_bytes = len(payload)  # type: ignore[attr-defined]
        record = worker.uploaded_checkpoint(job_id, attempt, 0, payload)
        assert worker.post_epoch(job_id, attempt, 0, checkpoint=record).status_code == 200

        response = client.get(f"/v1/jobs/{job_id}/checkpoints/{NAME}", headers=auth)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["x-checkpoint-sha256"] == record["sha256"]
        assert response.headers["content-disposition"] == f'attachment; filename="{NAME}"'
        assert hashlib.sha256(response.content).hexdigest() == record["sha256"]

    def test_deleting_the_job_deletes_its_files(self, store_client, worker_auth, engine, any_store):
        client = store_client
        auth = TenantKeys(engine).headers()
        worker = WorkerCalls(client, worker_auth)
        job_id = submit(client, auth)["id"]
        attempt = worker.attempt(job_id)
        record = worker.uploaded_checkpoint(job_id, attempt, 0, PAYLOAD)
        worker.post_epoch(job_id, attempt, 0, checkpoint=record)
        worker.finish(job_id, attempt)
        assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
        assert any_store.head(job_id, NAME) is None


class TestAbandonedUploads:
    def test_a_killed_processes_partial_body_goes_at_the_next_start_and_nothing_else(
        self, tmp_path: Path, settings: Settings, engine: Engine
    ):
        store = LocalStore(tmp_path / "artifacts")
        staging = store.staging_dir
        abandoned = staging / ".upload-killed.partial"
        under_way = staging / ".upload-receiving.partial"
        not_ours = staging / "notes.txt"
        for path in (abandoned, under_way, not_ours):
            path.write_bytes(b"x")
        two_hours_ago = time.time() - 7200
        for path in (abandoned, not_ours):
            os.utime(path, (two_hours_ago, two_hours_ago))

        app = create_app(settings, engine=engine, dispatcher=RecordingDispatcher(), store=store)
        with TestClient(app):  # the lifespan's start-up
            pass

        assert sorted(p.name for p in staging.iterdir()) == [under_way.name, not_ours.name]
