"""Checkpoints travel over HTTP, through real processes: a worker whose folder is not the
API's uploads each checkpoint into the API's store (a folder, or a bucket on moto's
standalone S3 server, which emulates S3), and the attempt that resumes a handed-back job
downloads its checkpoint from the API."""

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.stack import Process, Stack, wait_until
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.moto_server import S3Server

pytestmark = pytest.mark.integration

PREFIX = "tunelab"
FINISHED = {"succeeded", "failed", "cancelled"}


@dataclass
class Deployment:
    """A stack whose API keeps checkpoints in `store` ("folder" or "s3")."""

    stack: Stack
    store: str
    s3: S3Server | None = None
    bucket: str = ""

    def stored_sha256(self, job_id: str, name: str) -> str | None:
        """What the API's store holds under the job's name, read around the API."""
        if self.s3 is None:
            path = self.stack.workdir / "api-artifacts" / job_id / name
            return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        head = self.s3.client().head_object(Bucket=self.bucket, Key=f"{PREFIX}/{job_id}/{name}")
        return str(head["Metadata"]["sha256"])

    def start_worker(self, name: str) -> Process:
        """A worker on a node of its own: its folder is nobody else's, and the API's
        artifact folder is not even named to it."""
        process = self.stack.start(
            name,
            "worker",
            env={
                "TUNELAB_WORKER_DIR": str(self.stack.workdir / f"{name}-folder"),
                "TUNELAB_ARTIFACT_DIR": str(self.stack.workdir / f"{name}-nothing-here"),
            },
        )

        def ready() -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{process.log()[-3000:]}")
            return " ready." in process.log()

        wait_until(ready, 90, f"{name} to be ready")
        return process


@pytest.fixture(params=["folder", "s3"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    # A short lease and sweep, so that a killed worker's job is queued again in seconds.
    quick = {"TUNELAB_LEASE_SECONDS": "6", "TUNELAB_SWEEP_SECONDS": "1"}
    env = {"TUNELAB_ARTIFACT_DIR": str(tmp_path / "api-artifacts"), **quick}
    s3, bucket = None, ""
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = s3.new_bucket()
        env = {"TUNELAB_ARTIFACT_URL": f"s3://{bucket}/{PREFIX}", **s3.env(), **quick}
    stack = Stack(tmp_path, f"sqlite:///{tmp_path}/tunelab.db", "filesystem://", "training")
    write_synthetic_mnist(tmp_path / "data", train=2000, test=500)
    try:
        stack.tunelab("db", "upgrade")
        stack.start_api(env=env)
        yield Deployment(stack, request.param, s3, bucket)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def api(stack: Stack) -> httpx.Client:
    key = stack.create_key()
    return httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def job_when(client: httpx.Client, job_id: str, what: str, check: Callable[[dict], Any]) -> dict:
    def polled() -> dict | None:
        job: dict = client.get(f"/v1/jobs/{job_id}").json()
        return job if check(job) else None

    return wait_until(polled, 120, f"job {job_id}: {what}", interval=0.3)


def test_checkpoints_land_in_the_apis_store_and_download_intact(deployment: Deployment):
    stack = deployment.stack
    worker = deployment.start_worker("node-1")
    with api(stack) as client:
        spec = {"epochs": 2, "seed": 3, "data": {"train_subset": 2000, "test_subset": 500}}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        job = job_when(client, job_id, "to finish", lambda job: job["status"] in FINISHED)
        assert job["status"] == "succeeded", stack.logs()
        checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
        assert [c["name"] for c in checkpoints] == ["epoch-000.pt", "epoch-001.pt"]
        for checkpoint in checkpoints:
            assert deployment.stored_sha256(job_id, checkpoint["name"]) == checkpoint["sha256"]
            download = client.get(f"/v1/jobs/{job_id}/checkpoints/{checkpoint['name']}")
            assert download.status_code == 200
            assert download.headers["x-checkpoint-sha256"] == checkpoint["sha256"]
            assert hashlib.sha256(download.content).hexdigest() == checkpoint["sha256"]
    # The worker's copies went with the attempt; the API's are the ones that stay.
    assert not (stack.workdir / "node-1-folder" / "checkpoints" / job_id).exists()
    assert not (stack.workdir / "node-1-nothing-here").exists()
    assert "not uploaded" not in worker.log()


# Once, against the bucket: the folder store's side of it is the test above's.
@pytest.mark.parametrize("deployment", ["s3"], indirect=True)
def test_a_killed_workers_job_resumes_on_another_node_from_the_downloaded_checkpoint(
    deployment: Deployment,
):
    stack = deployment.stack
    first = deployment.start_worker("node-1")
    with api(stack) as client:
        spec = {"epochs": 3, "seed": 5, "data": {"train_subset": 1000, "test_subset": 250}}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        recorded = job_when(client, job_id, "an epoch recorded", lambda job: job["checkpoints"])
        # SIGKILL to the whole node: no goodbye, and its folder is never seen again.
        first.kill()
        second = deployment.start_worker("node-2")
        job = job_when(client, job_id, "to finish", lambda job: job["status"] in FINISHED)
        assert job["status"] == "succeeded", stack.logs()

        history = [(row["start_epoch"], row["outcome"]) for row in job["attempt_history"]]
        assert history[0][1] == "lease_expired"
        assert history[-1][1] == "succeeded"
        resumed_after = history[-1][0] - 1
        assert resumed_after >= recorded["checkpoints"][0]["epoch"]
        name = f"epoch-{resumed_after:03d}.pt"
        log = second.log()
        assert f"downloaded {name} to resume from" in log
        assert f"resuming from {name}" in log
        rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["items"]
        assert [row["epoch"] for row in rows] == [0, 1, 2]
        for checkpoint in job["checkpoints"]:
            assert deployment.stored_sha256(job_id, checkpoint["name"]) == checkpoint["sha256"]
