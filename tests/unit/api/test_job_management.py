"""Tags, filters and orders, deletion, checkpoint URLs and progress within the epoch."""

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.core.models import Job, utcnow
from shared.settings import Settings
from tests.unit.api.tenant_calls import QUICK_JOB, error_fields, submit
from tests.unit.api.worker_calls import PROGRESS, WorkerCalls


def finished_job(
    client: TestClient, auth: dict, worker: WorkerCalls, accuracy: float | None, **body
) -> dict:
    job = submit(client, auth, {**QUICK_JOB, **body})
    attempt = worker.attempt(job["id"])
    if accuracy is not None:
        worker.post_epoch(job["id"], attempt, 0, test_accuracy=accuracy)
    worker.finish(job["id"], attempt)
    return job


@pytest.fixture
def worker(client, worker_auth) -> WorkerCalls:
    return WorkerCalls(client, worker_auth)


def listed(client, auth, **params) -> list[str]:
    response = client.get("/v1/jobs", params=params, headers=auth)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["items"]]


class TestTags:
    def test_a_jobs_tags_are_kept_and_shown(self, client, auth):
        job = submit(client, auth, {**QUICK_JOB, "tags": ["baseline", "lr:0.1"]})
        assert job["tags"] == ["baseline", "lr:0.1"]
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["tags"] == [
            "baseline",
            "lr:0.1",
        ]

    @pytest.mark.parametrize("tags", [["has space"], [""], ["a" * 65], ["x", "x"], ["-lead"]])
    def test_a_bad_tag_is_a_422_at_tags(self, client, auth, tags):
        response = client.post("/v1/jobs", json={**QUICK_JOB, "tags": tags}, headers=auth)
        assert all(field.startswith("tags") for field in error_fields(response))

    def test_filter_by_tag_name_and_status(self, client, auth, worker):
        tagged = submit(client, auth, {**QUICK_JOB, "tags": ["sweep-a"], "name": "wide"})
        other = submit(client, auth, {**QUICK_JOB, "tags": ["sweep-b"], "name": "wide"})
        done = finished_job(client, auth, worker, 0.9, tags=["sweep-a"], name="narrow")
        assert listed(client, auth, tag="sweep-a") == [done["id"], tagged["id"]]
        assert listed(client, auth, name="wide") == [other["id"], tagged["id"]]
        assert listed(client, auth, tag="sweep-a", status="queued") == [tagged["id"]]
        assert listed(client, auth, tag="none-such") == []

    def test_a_bad_tag_filter_is_a_422_naming_it(self, client, auth):
        response = client.get("/v1/jobs", params={"tag": "a b"}, headers=auth)
        assert error_fields(response) == ["query.tag"]


class TestOrderByAccuracy:
    def test_best_first_then_unscored_and_pages_hold_every_job_once(self, client, auth, worker):
        accuracies = [0.91, None, 0.97, 0.93, 0.97, None, 0.95]
        jobs = [finished_job(client, auth, worker, accuracy) for accuracy in accuracies]
        seen, cursor = [], None
        while True:
            params = {"order": "test_accuracy", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/jobs", params=params, headers=auth).json()
            seen += [(job["id"], job["best"]) for job in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(job_id for job_id, _ in seen) == sorted(job["id"] for job in jobs)
        scores = [best["test_accuracy"] if best else None for _, best in seen]
        assert scores == [0.97, 0.97, 0.95, 0.93, 0.91, None, None]
        # Ties and the unscored go newest first, like the default order.
        ids = [job_id for job_id, _ in seen]
        assert ids[0] > ids[1] and ids[5] > ids[6]

    def test_a_cursor_from_the_other_order_pages_on_from_its_job(self, client, auth, worker):
        jobs = [finished_job(client, auth, worker, accuracy) for accuracy in (0.9, 0.8, 0.7)]
        after_best = listed(client, auth, order="test_accuracy", cursor=jobs[0]["id"])
        assert after_best == [jobs[1]["id"], jobs[2]["id"]]
        newest_after = listed(client, auth, cursor=f"0.8~{jobs[2]['id']}")
        assert newest_after == [jobs[1]["id"], jobs[0]["id"]]

    @pytest.mark.parametrize("cursor", ["nan~job_01a2349e5d8a5e91c85f68fa", "1e999~job_x", "x"])
    def test_a_made_up_cursor_is_a_422_naming_it(self, client, auth, cursor):
        response = client.get(
            "/v1/jobs", params={"order": "test_accuracy", "cursor": cursor}, headers=auth
        )
        assert error_fields(response) == ["query.cursor"]

    def test_an_unknown_order_is_a_422_listing_the_orders(self, client, auth):
        response = client.get("/v1/jobs", params={"order": "loss"}, headers=auth)
        assert error_fields(response) == ["query.order"]
        assert "created_at" in response.json()["errors"][0]["message"]


class TestDelete:
    def test_an_ended_job_goes_with_its_rows_and_files(
        self, client, auth, worker, settings: Settings, engine
    ):
        job = submit(client, auth, {**QUICK_JOB, "tags": ["gone"]})
        attempt = worker.attempt(job["id"])
        record = worker.uploaded_checkpoint(job["id"], attempt, 0, b"weights")
        assert worker.post_epoch(job["id"], attempt, 0, checkpoint=record).status_code == 200
        folder = Path(settings.artifact_dir) / job["id"]
        assert (folder / "epoch-000.pt").read_bytes() == b"weights"
        worker.finish(job["id"], attempt)

        response = client.delete(f"/v1/jobs/{job['id']}", headers=auth)
        assert response.status_code == 204, response.text
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 404
        assert listed(client, auth, tag="gone") == []
        assert not folder.exists()
        with Session(engine) as session:
            assert session.get(Job, job["id"]) is None

    def test_a_queued_or_running_job_is_409(self, client, auth, worker):
        queued = submit(client, auth)
        running = submit(client, auth)
        worker.attempt(running["id"])
        for job in (queued, running):
            response = client.delete(f"/v1/jobs/{job['id']}", headers=auth)
            assert response.status_code == 409
            assert "cancel it first" in response.json()["detail"]
        assert client.get(f"/v1/jobs/{queued['id']}", headers=auth).status_code == 200

    def test_another_tenants_job_is_404_and_stays(self, client, keys, worker):
        owner = keys.headers("acme")
        job = finished_job(client, owner, worker, 0.9)
        response = client.delete(f"/v1/jobs/{job['id']}", headers=keys.headers("globex"))
        assert response.status_code == 404
        assert client.get(f"/v1/jobs/{job['id']}", headers=owner).status_code == 200


class TestCheckpointUrls:
    def test_each_checkpoint_names_its_download(self, client, auth, worker):
        job = submit(client, auth)
        attempt = worker.attempt(job["id"])
        record = worker.uploaded_checkpoint(job["id"], attempt, 0)
        worker.post_epoch(job["id"], attempt, 0, checkpoint=record)
        listing = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()
        assert [c["url"] for c in listing["items"]] == [
            f"/v1/jobs/{job['id']}/checkpoints/epoch-000.pt"
        ]
        shown = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert shown["checkpoints"][0]["url"] == listing["items"][0]["url"]


class TestProgress:
    def test_a_heartbeat_shows_the_epoch_under_way(self, client, auth, worker):
        job = submit(client, auth)
        attempt = worker.attempt(job["id"])
        assert worker.heartbeat(job["id"], attempt, PROGRESS).status_code == 200
        progress = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["progress"]
        assert progress["batches_completed"] == 3
        assert progress["batches"] == 8
        assert progress["images_per_second"] == 640.0
        assert 0 < progress["eta_seconds"] <= 12.0

    def test_the_eta_counts_down_between_beats(self, client, auth, worker, engine):
        job = submit(client, auth)
        attempt = worker.attempt(job["id"])
        worker.heartbeat(job["id"], attempt, PROGRESS)
        with Session(engine) as session:
            row = session.get(Job, job["id"])
            assert row is not None and row.live_progress is not None
            earlier = (utcnow() - timedelta(seconds=5)).isoformat()
            row.live_progress = {**row.live_progress, "reported_at": earlier}
            session.add(row)
            session.commit()
        progress = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["progress"]
        assert 6.0 <= progress["eta_seconds"] <= 7.1

    def test_a_report_from_an_epoch_since_recorded_is_not_shown(self, client, auth, worker):
        job = submit(client, auth)
        attempt = worker.attempt(job["id"])
        worker.heartbeat(job["id"], attempt, PROGRESS)
        worker.post_epoch(job["id"], attempt, 0)
        progress = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["progress"]
        assert progress["epochs_completed"] == 1
        assert progress["batches_completed"] is None

    def test_a_new_attempt_starts_without_the_old_ones_progress(self, client, auth, worker):
        job = submit(client, auth)
        attempt = worker.attempt(job["id"])
        worker.heartbeat(job["id"], attempt, PROGRESS)
        worker.release(job["id"], attempt)
        worker.attempt(job["id"], worker="node-2")
        progress = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["progress"]
        assert progress["batches_completed"] is None

    def test_a_bad_progress_is_a_422(self, client, auth, worker):
        job = submit(client, auth)
        attempt = worker.attempt(job["id"])
        response = worker.heartbeat(job["id"], attempt, {**PROGRESS, "batches": 0})
        assert response.status_code == 422
