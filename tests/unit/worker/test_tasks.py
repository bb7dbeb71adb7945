"""run_attempt against a scripted API: what the task does when the API goes away, and what
it decides once per job."""

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from shared.messages import Claim
from shared.settings import Settings
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.cpu_flags import cpuinfo_opens
from tests.unit.worker.reporters import KilledAfter, WorkerKilled
from tests.unit.worker.scripted_api import JOB_ID, InternalApi, claim_of, serve
from tests.unit.worker.small_jobs import CPU_FP32, small_job
from worker import shutdown, tasks
from worker.training.checkpoints import Checkpointing
from worker.training.data import MnistTensors, load_mnist
from worker.training.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        api_url="http://api",
        worker_token="worker-token",
        data_dir=tmp_path / "data",
        artifact_dir=tmp_path / "artifacts",
        worker_dir=tmp_path / "worker",
        heartbeat_seconds=60,
        handback_grace_seconds=0.05,
    )


@pytest.fixture
def mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MnistTensors:
    write_synthetic_mnist(tmp_path / "data", train=256, test=64)
    data = load_mnist(tmp_path / "data")
    # Onto the device the task picked, as the real loader does: on a machine with CUDA the
    # task trains there, and CPU tensors would not index with its indices.
    monkeypatch.setattr(tasks, "mnist_on_device", lambda _data_dir, device: data.to(device))
    return data


class TestTheApiGoingAway:
    def test_an_unreachable_api_at_claim_time_is_logged_and_the_task_returns(
        self, monkeypatch, settings, caplog
    ):
        api = InternalApi(claim=httpx.ConnectError("connection refused"))
        serve(monkeypatch, api)
        with caplog.at_level(logging.WARNING, logger="worker.tasks"):
            assert tasks.run_attempt(JOB_ID, settings) is None
        assert api.routes == ["claim"]
        [record] = [r for r in caplog.records if r.name == "worker.tasks"]
        assert record.levelno == logging.ERROR
        message = record.getMessage()
        assert JOB_ID in message and "unreachable" in message and "connection refused" in message

    @pytest.mark.parametrize(
        "failure",
        [httpx.ConnectError("connection refused"), httpx.Response(404, json={"detail": "gone"})],
        ids=["unreachable", "refused"],
    )
    def test_a_finish_that_cannot_be_delivered_is_logged_and_the_task_returns(
        self, monkeypatch, settings, mnist, caplog, failure
    ):
        api = InternalApi(claim_of(), finish=failure)
        serve(monkeypatch, api)
        with caplog.at_level(logging.WARNING, logger="worker.tasks"):
            assert tasks.run_attempt(JOB_ID, settings) is None
        # The checkpoint is uploaded (PUT .../checkpoints/epoch-000.pt) before its epoch.
        assert api.routes == ["claim", "epoch-000.pt", "epochs", "finish"]
        assert any(
            "could not report how it ended" in record.getMessage() for record in caplog.records
        )

    def test_a_hand_back_that_cannot_be_delivered_is_logged_and_the_task_returns(
        self, monkeypatch, settings, mnist, caplog
    ):
        api = InternalApi(claim_of(), release=httpx.ConnectError("connection refused"))
        serve(monkeypatch, api)
        # As if SIGTERM had come with no grace left: the loop hands back before a batch.
        monkeypatch.setattr(shutdown, "_deadline", time.monotonic())
        with caplog.at_level(logging.WARNING, logger="worker.tasks"):
            assert tasks.run_attempt(JOB_ID, settings) is None
        assert api.routes == ["claim", "release"]
        assert any(
            "could not report how it ended" in record.getMessage() for record in caplog.records
        )


class TestOncePerJob:
    def test_the_cpu_flags_are_read_once_per_job_not_per_batch(self, monkeypatch, settings, mnist):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        opened = cpuinfo_opens(monkeypatch)
        # Two epochs of two batches each, and two evaluations.
        api = InternalApi(claim_of(epochs=2))
        serve(monkeypatch, api)
        tasks.run_attempt(JOB_ID, settings)
        assert api.routes == [
            "claim",
            "epoch-000.pt",
            "epochs",
            "epoch-001.pt",
            "epochs",
            "finish",
        ]
        assert len(opened) == 1


class ServingCheckpoints(InternalApi):
    """The internal routes, with checkpoint files to download (GET) and uploads (PUT)
    answered 201; `requests` is every (method, route) in order."""

    def __init__(self, granted: Claim, files: dict[str, bytes]) -> None:
        super().__init__(granted)
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.epochs_posted: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        route = request.url.path.rsplit("/", 1)[1]
        self.requests.append((request.method, route))
        if request.method == "GET":
            if route not in self.files:
                return httpx.Response(404, json={"detail": "no such checkpoint"})
            return httpx.Response(200, content=self.files[route])
        if request.method == "PUT":
            return httpx.Response(201, json={})
        if route == "epochs":
            self.epochs_posted.append(json.loads(request.content)["metrics"]["epoch"])
        return super().__call__(request)


def uploaded_elsewhere(mnist: MnistTensors, folder: Path, spec: Any) -> tuple[Any, bytes]:
    """Epoch 0's checkpoint of `spec`, as an attempt on another node wrote and uploaded it
    before it died: its record and bytes."""
    reporter = KilledAfter(kill_after_epoch=0)
    with pytest.raises(WorkerKilled):
        train(spec, mnist, reporter, Checkpointing(folder, JOB_ID), hardware=CPU_FP32)
    [record] = [record for record in reporter.checkpoints if record is not None]
    return record, (folder / record.path).read_bytes()


class TestResumeOverHttp:
    def test_the_checkpoint_is_downloaded_checked_and_resumed_from(
        self, monkeypatch, settings, mnist, tmp_path
    ):
        spec = small_job(epochs=2, data={"train_subset": 128})
        record, payload = uploaded_elsewhere(mnist, tmp_path / "other-node", spec)
        claim = claim_of(epochs=2).model_copy(update={"spec": spec, "checkpoints": [record]})
        api = ServingCheckpoints(claim, {record.name: payload})
        serve(monkeypatch, api)
        tasks.run_attempt(JOB_ID, settings)
        assert api.requests == [
            ("POST", "claim"),
            ("GET", "epoch-000.pt"),
            ("PUT", "epoch-001.pt"),
            ("POST", "epochs"),
            ("POST", "finish"),
        ]
        assert api.epochs_posted == [1]
        # The worker's folder is its own, and emptied once the attempt has ended.
        assert not (settings.worker_dir / "checkpoints" / JOB_ID).exists()

    @pytest.mark.parametrize("served", ["tampered", "missing"])
    def test_a_download_that_is_not_the_recorded_file_is_not_resumed_from(
        self, monkeypatch, settings, mnist, tmp_path, served
    ):
        spec = small_job(epochs=2, data={"train_subset": 128})
        record, payload = uploaded_elsewhere(mnist, tmp_path / "other-node", spec)
        claim = claim_of(epochs=2).model_copy(update={"spec": spec, "checkpoints": [record]})
        tampered = payload[:-1] + bytes([payload[-1] ^ 0xFF])
        files = {record.name: tampered} if served == "tampered" else {}
        api = ServingCheckpoints(claim, files)
        serve(monkeypatch, api)
        tasks.run_attempt(JOB_ID, settings)
        # Trained from the start instead: both epochs, each with its own upload.
        assert api.epochs_posted == [0, 1]
        assert ("PUT", "epoch-000.pt") in api.requests
