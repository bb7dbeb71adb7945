"""A job goes in over HTTP and a trained model comes out, through real processes."""

import hashlib

import httpx
import pytest

from cli.client.server_events import parse_events
from testbed.stack import Stack, wait_until

pytestmark = pytest.mark.integration

SMALL_JOB = {
    "name": "two-epochs",
    "epochs": 2,
    "seed": 3,
    "data": {"train_subset": 2000, "test_subset": 500},
}
FINISHED = {"succeeded", "failed", "cancelled"}


def poll_until_finished(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    def finished() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in FINISHED else None

    return wait_until(finished, timeout, f"job {job_id} to finish", interval=0.5)


class TestJobFlow:
    def test_a_job_trains_and_its_checkpoint_downloads(self, stack: Stack):
        with stack.client(stack.create_key(), timeout=10) as client:
            created = client.post("/v1/jobs", json=SMALL_JOB)
            assert created.status_code == 201, created.text
            assert created.json()["status"] == "queued"
            job = poll_until_finished(client, created.json()["id"])
            assert job["status"] == "succeeded", stack.logs()
            assert job["attempts"] == 1
            assert job["progress"]["epochs_completed"] == job["progress"]["epochs"] == 2
            # An ended job has no epoch under way.
            assert job["progress"]["batches_completed"] is None

            rows = client.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
            assert [row["epoch"] for row in rows] == [0, 1]
            assert all(row["batch_size"] == 128 for row in rows)
            # The synthetic digits are easy: two epochs must learn them.
            assert rows[-1]["test_accuracy"] > 0.5
            assert all(row["images_per_second"] > 0 for row in rows)

            checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
            assert [c["name"] for c in checkpoints] == ["epoch-000.pt", "epoch-001.pt"]
            last = checkpoints[-1]
            download = client.get(f"/v1/jobs/{job['id']}/checkpoints/{last['name']}")
            assert download.status_code == 200
            assert hashlib.sha256(download.content).hexdigest() == last["sha256"]
            assert len(download.content) == last["bytes"]

    # On the embedded stack only: the progress path is the same code on both.
    def test_a_running_job_shows_its_progress_within_the_epoch(self, embedded_stack: Stack):
        stack = embedded_stack
        with stack.client(stack.create_key(), timeout=10) as client:
            long_job = {**SMALL_JOB, "name": "progress", "epochs": 60}
            job_id = client.post("/v1/jobs", json=long_job).json()["id"]
            progress = wait_until(
                lambda: (p := client.get(f"/v1/jobs/{job_id}").json()["progress"])["batches"] and p,
                120,
                "a heartbeat with the epoch's progress",
                interval=0.5,
            )
            # 2000 images in batches of 128.
            assert progress["batches"] == 16
            assert 0 <= progress["batches_completed"] <= 16
            assert progress["eta_seconds"] is None or progress["eta_seconds"] > 0

            # The event stream says the same. Which point of an epoch a heartbeat catches
            # depends on the machine's speed (a fast epoch may only ever be caught at its
            # start, before any pace is known), so only the shape is asserted here; the
            # pace itself is the progress meter's unit tests' business.
            seen: dict[str, dict] = {}
            with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as stream:
                for event in parse_events(stream.iter_lines()):
                    seen.setdefault(event.event, event.data)
                    if {"status", "progress", "metrics"} <= seen.keys():
                        break
            assert seen["status"]["status"] == "running"
            assert seen["progress"]["batches"] == 16
            assert 0 <= seen["progress"]["batches_completed"] <= 16
            assert seen["progress"]["images_per_second"] >= 0
            client.post(f"/v1/jobs/{job_id}/cancel")

    def test_a_running_job_is_cancelled_and_stops(self, stack: Stack):
        with stack.client(stack.create_key(), timeout=10) as client:
            long_job = {**SMALL_JOB, "name": "long", "epochs": 60}
            job_id = client.post("/v1/jobs", json=long_job).json()["id"]
            wait_until(
                lambda: client.get(f"/v1/jobs/{job_id}/metrics").json()["items"],
                120,
                "the long job's first epoch",
            )

            cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
            assert cancelled.status_code == 200
            assert cancelled.json()["status"] == "cancelled"
            epochs_at_cancel = len(client.get(f"/v1/jobs/{job_id}/metrics").json()["items"])

            # The worker trains one job at a time: the next one runs only once it has stopped.
            next_id = client.post("/v1/jobs", json=SMALL_JOB).json()["id"]
            assert poll_until_finished(client, next_id)["status"] == "succeeded"

            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "cancelled"
            assert [(a["attempt"], a["outcome"]) for a in job["attempt_history"]] == [
                (1, "cancelled")
            ]
            assert job["attempts"] == 1
            rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["items"]
            # The epoch in flight when the cancel came is refused: no rows after the cancel.
            assert len(rows) == epochs_at_cancel < long_job["epochs"]
