"""Validation metrics: stored with each epoch, shown in the metrics and the job, and the
job's best epoch chosen by them when the job holds images out."""

import pytest

from tests.unit.api.tenant_calls import error_fields, submit
from tests.unit.api.worker_calls import WorkerCalls

VALIDATED_JOB = {"epochs": 3, "data": {"train_subset": 256, "test_subset": 64, "validation": 100}}
SPLIT = {
    "train_images": 256,
    "validation_images": 100,
    "train_sha256": "a" * 64,
    "validation_sha256": "b" * 64,
}


@pytest.fixture
def worker(client, worker_auth) -> WorkerCalls:
    return WorkerCalls(client, worker_auth)


@pytest.fixture
def validated(client, auth, worker) -> tuple[str, dict]:
    """A job holding 100 images out, claimed: its id and its attempt."""
    job = submit(client, auth, VALIDATED_JOB)
    return job["id"], worker.attempt(job["id"])


def posted(worker: WorkerCalls, job_id: str, attempt: dict, epoch: int, **metrics) -> None:
    response = worker.post_epoch(job_id, attempt, epoch, **metrics)
    assert response.status_code == 200, response.text


class TestSubmission:
    def test_the_stored_spec_carries_the_validation_fields(self, client, auth):
        job = submit(client, auth, {**VALIDATED_JOB, "deterministic": True})
        assert job["spec"]["data"]["validation"] == 100
        assert job["spec"]["data"]["validation_seed"] == 0
        assert job["spec"]["deterministic"] is True

    def test_the_defaults_hold_nothing_out(self, client, auth):
        job = submit(client, auth, {})
        assert job["spec"]["data"]["validation"] == 0
        assert job["spec"]["deterministic"] is False

    def test_a_subset_larger_than_what_validation_leaves_is_422_naming_it(self, client, auth):
        body = {"data": {"validation": 10_000, "train_subset": 50_001}}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert error_fields(response) == ["data.train_subset"]
        assert "at most 50000" in response.json()["errors"][0]["message"]

    @pytest.mark.parametrize(
        ("data", "field"),
        [
            ({"validation": 59_999}, "data.validation"),
            ({"validation": -1}, "data.validation"),
            ({"validation_seed": 2**31}, "data.validation_seed"),
        ],
    )
    def test_out_of_range_fields_are_422_naming_them(self, client, auth, data, field):
        response = client.post("/v1/jobs", json={"data": data}, headers=auth)
        assert error_fields(response) == [field]


class TestStoredAndShown:
    def test_each_epochs_validation_metrics_are_returned(self, client, auth, worker, validated):
        job_id, attempt = validated
        posted(worker, job_id, attempt, 0, val_loss=0.7, val_accuracy=0.81)
        posted(worker, job_id, attempt, 1, val_loss=0.5, val_accuracy=0.86)
        rows = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth).json()["items"]
        assert [(row["val_loss"], row["val_accuracy"]) for row in rows] == [
            (0.7, 0.81),
            (0.5, 0.86),
        ]
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert job["latest_metrics"]["val_accuracy"] == 0.86
        assert job["latest_metrics"]["val_loss"] == 0.5

    def test_without_validation_they_are_null(self, client, auth, worker):
        job_id = submit(client, auth)["id"]
        posted(worker, job_id, worker.attempt(job_id), 0)
        [row] = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth).json()["items"]
        assert (row["val_loss"], row["val_accuracy"]) == (None, None)
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert job["best"] == {"epoch": 0, "test_accuracy": 0.9, "val_accuracy": None}

    def test_a_checkpoint_shows_its_epochs_validation_accuracy(
        self, client, auth, worker, validated
    ):
        job_id, attempt = validated
        record = {**worker.uploaded_checkpoint(job_id, attempt, 0), "val_accuracy": 0.83}
        response = worker.post_epoch(job_id, attempt, 0, checkpoint=record, val_accuracy=0.83)
        assert response.status_code == 200, response.text
        [listed] = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()["items"]
        assert (listed["val_accuracy"], listed["test_accuracy"]) == (0.83, 0.9)

    def test_the_result_shows_the_split_the_worker_reports(self, client, auth, worker, validated):
        job_id, attempt = validated
        body = {**attempt, "status": "succeeded", "result": {"split": SPLIT}}
        response = client.post(
            f"/internal/v1/jobs/{job_id}/finish", json=body, headers=worker.headers
        )
        assert response.status_code == 200, response.text
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert job["result"]["split"] == SPLIT

    def test_the_openapi_document_describes_them(self, client):
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        assert {"val_loss", "val_accuracy"} <= schemas["EpochMetrics"]["properties"].keys()
        best = schemas["BestEpoch"]
        assert "val_accuracy" in best["properties"]
        assert "validation" in best["description"]
        assert "val_accuracy" in schemas["CheckpointPublic"]["properties"]


class TestBestEpoch:
    def test_by_validation_when_the_job_validates_never_by_test(
        self, client, auth, worker, validated
    ):
        job_id, attempt = validated
        # Test accuracy peaks at epoch 0, validation accuracy at epoch 1.
        posted(worker, job_id, attempt, 0, test_accuracy=0.99, val_accuracy=0.80)
        posted(worker, job_id, attempt, 1, test_accuracy=0.95, val_accuracy=0.90)
        posted(worker, job_id, attempt, 2, test_accuracy=0.97, val_accuracy=0.85)
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        # The best epoch's own test accuracy, not the highest the job reached.
        assert job["best"] == {"epoch": 1, "test_accuracy": 0.95, "val_accuracy": 0.90}

    def test_the_first_epoch_to_reach_the_highest_validation_stays_best(
        self, client, auth, worker, validated
    ):
        job_id, attempt = validated
        posted(worker, job_id, attempt, 0, test_accuracy=0.90, val_accuracy=0.88)
        posted(worker, job_id, attempt, 1, test_accuracy=0.99, val_accuracy=0.88)
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["best"]["epoch"] == 0

    def test_by_test_accuracy_without_validation(self, client, auth, worker):
        job_id = submit(client, auth)["id"]
        attempt = worker.attempt(job_id)
        posted(worker, job_id, attempt, 0, test_accuracy=0.95)
        posted(worker, job_id, attempt, 1, test_accuracy=0.97)
        best = client.get(f"/v1/jobs/{job_id}", headers=auth).json()["best"]
        assert best == {"epoch": 1, "test_accuracy": 0.97, "val_accuracy": None}

    def test_a_repeated_post_changes_nothing(self, client, auth, worker, validated):
        job_id, attempt = validated
        posted(worker, job_id, attempt, 0, test_accuracy=0.90, val_accuracy=0.85)
        posted(worker, job_id, attempt, 1, test_accuracy=0.92, val_accuracy=0.80)
        posted(worker, job_id, attempt, 1, test_accuracy=0.92, val_accuracy=0.80)
        best = client.get(f"/v1/jobs/{job_id}", headers=auth).json()["best"]
        assert best == {"epoch": 0, "test_accuracy": 0.90, "val_accuracy": 0.85}
