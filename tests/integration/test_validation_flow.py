"""A job that holds training images out, through real processes: it reports validation
metrics every epoch, and what it validated on is disjoint from what it trained on.

The worker records the SHA-256 of the indices it trained and validated on (the job's
`result.split`), computed from the very indices it took the images by. The test loads the
files the worker loaded, splits them with the worker's own function, checks that the two
index sets are disjoint and stratified, and that their digests are the ones the worker
recorded: so the check is of what the worker did, not only of what the function does.
"""

from collections import Counter

import httpx
import pytest

from shared.spec import JobSpec
from testbed.stack import Stack, wait_until
from worker.training.data import load_mnist
from worker.training.splits import indices_sha256, split_training_images

pytestmark = pytest.mark.integration

# The stack's synthetic training file holds 2,000 images: 400 held out, the 1,600 others
# trained on.
VALIDATED_JOB = {
    "name": "validated",
    "epochs": 2,
    "seed": 3,
    "data": {"train_subset": 1600, "test_subset": 500, "validation": 400, "validation_seed": 7},
}


def finished(client: httpx.Client, job_id: str) -> dict:
    def ended() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

    return wait_until(ended, 180, f"job {job_id} to finish", interval=0.5)


class TestValidationFlow:
    def test_a_validated_job_reports_validation_on_images_it_never_trained_on(self, stack: Stack):
        with stack.client(stack.create_key(), timeout=10) as client:
            created = client.post("/v1/jobs", json=VALIDATED_JOB)
            assert created.status_code == 201, created.text
            job = finished(client, created.json()["id"])
            assert job["status"] == "succeeded", stack.logs()

            rows = client.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
            assert [row["epoch"] for row in rows] == [0, 1]
            for row in rows:
                assert row["val_loss"] > 0
                assert 0 <= row["val_accuracy"] <= 1
                assert row["test_accuracy"] is not None
            # The synthetic digits are easy: held-out ones too.
            assert rows[-1]["val_accuracy"] > 0.5

            best_epoch = max(rows, key=lambda row: (row["val_accuracy"], -row["epoch"]))
            assert job["best"] == {
                "epoch": best_epoch["epoch"],
                "test_accuracy": best_epoch["test_accuracy"],
                "val_accuracy": best_epoch["val_accuracy"],
            }
            checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
            assert [c["val_accuracy"] for c in checkpoints] == [r["val_accuracy"] for r in rows]

        recorded = job["result"]["split"]
        assert (recorded["train_images"], recorded["validation_images"]) == (1600, 400)

        labels = load_mnist(stack.workdir / "data").train.labels
        split = split_training_images(labels, JobSpec.model_validate(VALIDATED_JOB).data)
        assert indices_sha256(split.train) == recorded["train_sha256"]
        assert indices_sha256(split.validation) == recorded["validation_sha256"]
        trained, validated = set(split.train.tolist()), set(split.validation.tolist())
        assert len(trained) == 1600 and len(validated) == 400
        assert trained.isdisjoint(validated)
        assert Counter(labels[split.validation].tolist()) == dict.fromkeys(range(10), 40)
