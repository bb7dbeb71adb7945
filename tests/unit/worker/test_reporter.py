import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.messages import (
    BatchProgress,
    CheckpointRecord,
    Claim,
    EpochMetrics,
    JobError,
    JobResult,
    LrRangeResult,
)
from shared.spec import JobSpec
from worker.api_client import ApiClient, ApiRefused, ApiUnreachable
from worker.reporter import AttemptReporter
from worker.tasks import describe_failure
from worker.training.loop import TrainingDiverged


def metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch,
        train_loss=0.1,
        train_accuracy=0.9,
        test_loss=0.1,
        test_accuracy=0.9,
        lr=0.05,
        batch_size=128,
        epoch_seconds=1.0,
        images_per_second=100.0,
    )


def claim() -> Claim:
    return Claim(job_id="job_1", attempt=2, lease_token="t" * 32, lease_seconds=60, spec=JobSpec())


class FakeApi:
    """Answers the internal routes from a script of responses and records every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        # The client's back-off waits, recorded instead of slept.
        self.waits: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = (
            self.answers.pop(0) if self.answers else httpx.Response(200, json={"cancelled": False})
        )
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, retry_seconds: float = 5.0) -> ApiClient:
        return ApiClient(
            "http://api",
            "worker-token",
            retry_seconds=retry_seconds,
            transport=httpx.MockTransport(self),
            sleep=self.waits.append,
        )

    def bodies(self) -> list[dict]:
        return [json.loads(request.content) for request in self.requests]


class TestApiClient:
    def test_sends_the_worker_token(self):
        api = FakeApi()
        api.client().post("/x", claim())
        assert api.requests[0].headers["authorization"] == "Bearer worker-token"

    def test_a_server_error_is_retried_until_the_answer(self):
        api = FakeApi(httpx.Response(503), httpx.Response(200, json={"cancelled": False}))
        assert api.client().post("/x", claim()) == {"cancelled": False}
        assert len(api.requests) == 2
        assert api.waits == [pytest.approx(0.2)]

    def test_a_transport_error_is_retried(self):
        api = FakeApi(httpx.ReadTimeout("slow"), httpx.Response(200, json={"cancelled": True}))
        assert api.client().post("/x", claim()) == {"cancelled": True}
        assert len(api.requests) == 2

    def test_retries_through_an_outage_and_server_errors(self):
        api = FakeApi(
            httpx.ConnectError("down"),
            httpx.Response(503),
            httpx.Response(200, json={"cancelled": False}),
        )
        assert api.client().post("/x", claim()) == {"cancelled": False}
        assert len(api.requests) == 3

    def test_the_back_off_doubles_from_a_fifth_of_a_second_up_to_ten(self):
        api = FakeApi(*[httpx.ConnectError("down")] * 8)
        api.client(retry_seconds=300).post("/x", claim())
        assert api.waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])
        assert len(api.requests) == 9

    def test_logs_each_retry_before_waiting(self, caplog):
        api = FakeApi(httpx.Response(502))
        with caplog.at_level(logging.WARNING, logger="worker.api_client"):
            api.client().post("/x", claim())
        assert [record.getMessage() for record in caplog.records] == [
            "POST /x failed (HTTP 502); retrying in 0.2 s"
        ]

    def test_gives_up_at_the_deadline_naming_the_last_problem(self):
        api = FakeApi(*[httpx.ConnectError("down")] * 50)
        with pytest.raises(ApiUnreachable, match="POST /x failed until the deadline") as gave_up:
            api.client(retry_seconds=0.5).post("/x", claim())
        # 0.2 + 0.4 s fit in the half second; the next wait, 0.8 s, would end past it.
        assert api.waits == pytest.approx([0.2, 0.4])
        assert len(api.requests) == 3
        assert "ConnectError: down" in str(gave_up.value)
        assert isinstance(gave_up.value.__cause__, httpx.ConnectError)

    def test_server_errors_until_the_deadline_say_so(self):
        api = FakeApi(*[httpx.Response(503)] * 50)
        with pytest.raises(ApiUnreachable, match="HTTP 503"):
            api.client(retry_seconds=0.01).post("/x", claim())
        assert len(api.requests) == 1 and api.waits == []

    def test_a_per_call_deadline_overrides_the_clients(self):
        api = FakeApi(*[httpx.ConnectError("down")] * 50)
        with pytest.raises(ApiUnreachable):
            api.client(retry_seconds=300).post("/x", claim(), retry_seconds=0.01)
        assert len(api.requests) == 1 and api.waits == []

    @pytest.mark.parametrize("status", [404, 409, 422])
    def test_a_client_error_is_not_retried(self, status):
        api = FakeApi(httpx.Response(status, json={"detail": "no"}))
        with pytest.raises(ApiRefused) as refused:
            api.client().post("/x", claim())
        assert refused.value.status == status
        assert refused.value.body == {"detail": "no"}
        assert len(api.requests) == 1 and api.waits == []

    def test_posts_hold_the_lock_while_they_are_sent(self):
        held: list[bool] = []

        def answer(request: httpx.Request) -> httpx.Response:
            held.append(client.lock.locked())
            return httpx.Response(200, json={"cancelled": False})

        client = ApiClient("http://api", "t", transport=httpx.MockTransport(answer))
        client.post("/x", claim())
        assert held == [True]
        assert not client.lock.locked()


def reporter_for(api: FakeApi, heartbeat_seconds: float = 60) -> AttemptReporter:
    return AttemptReporter(api.client(), claim(), heartbeat_seconds)


def progress(batches_completed: int) -> BatchProgress:
    return BatchProgress(
        epoch=3, batches_completed=batches_completed, batches=50, images_per_second=900.0
    )


def first_heartbeat(api: FakeApi, matching: Callable[[dict], bool] = lambda _: True) -> dict:
    """The body of the first heartbeat `matching` holds for, once it has arrived."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for request in list(api.requests):
            if request.url.path.endswith("/heartbeat"):
                body = json.loads(request.content)
                if matching(body):
                    return body
        time.sleep(0.01)
    raise AssertionError("no such heartbeat arrived")


class TestAttemptReporter:
    def test_posts_each_epoch_with_its_attempt_and_token(self):
        api = FakeApi()
        with reporter_for(api) as reporter:
            reporter.epoch_finished(metrics(0), None)
            reporter.epoch_finished(metrics(1), None)
            reporter.flush()
            assert [r.url.path for r in api.requests] == ["/internal/v1/jobs/job_1/epochs"] * 2
            bodies = api.bodies()
            assert [b["metrics"]["epoch"] for b in bodies] == [0, 1]
            assert {(b["attempt"], b["lease_token"]) for b in bodies} == {(2, "t" * 32)}
            assert not reporter.should_stop()

    def test_training_goes_on_while_the_api_is_down_and_epochs_arrive_in_order(self):
        api_back = threading.Event()
        delivered: list[int] = []

        def answer(request: httpx.Request) -> httpx.Response:
            if not api_back.is_set():
                raise httpx.ConnectError("down")
            delivered.append(json.loads(request.content)["metrics"]["epoch"])
            return httpx.Response(200, json={"cancelled": False})

        client = ApiClient(
            "http://api", "t", retry_seconds=30, transport=httpx.MockTransport(answer)
        )
        with AttemptReporter(client, claim(), heartbeat_seconds=60) as reporter:
            for epoch in range(3):
                reporter.epoch_finished(metrics(epoch), None)  # returns at once, API or not
            assert delivered == []
            api_back.set()
            reporter.flush()
            assert delivered == [0, 1, 2]
            assert not reporter.should_stop()

    def test_a_cancel_in_the_answer_stops_training(self):
        api = FakeApi(httpx.Response(200, json={"cancelled": True}))
        with reporter_for(api) as reporter:
            reporter.epoch_finished(metrics(0), None)
            reporter.flush()
            assert reporter.should_stop()
            assert reporter.cancelled.is_set()

    def test_a_prune_in_the_answer_stops_training_without_a_cancel(self):
        api = FakeApi(httpx.Response(200, json={"cancelled": False, "pruned": True}))
        with reporter_for(api) as reporter:
            reporter.epoch_finished(metrics(0), None)
            reporter.flush()
            assert reporter.should_stop()
            assert reporter.pruned.is_set() and not reporter.cancelled.is_set()
            assert reporter.stop_reason() == "pruned by its study"

    def test_a_lost_lease_stops_training_and_silences_the_finish(self):
        api = FakeApi(httpx.Response(409, json={"detail": "stale"}))
        with reporter_for(api) as reporter:
            reporter.epoch_finished(metrics(0), None)
            reporter.flush()
            assert reporter.lost.is_set() and reporter.should_stop()
            reporter.finish("succeeded")
        assert len(api.requests) == 1

    def test_the_heartbeat_hears_a_cancel_between_epochs(self):
        cancelled = threading.Event()

        def answer(request: httpx.Request) -> httpx.Response:
            cancelled.set()
            return httpx.Response(200, json={"cancelled": True})

        client = ApiClient("http://api", "t", transport=httpx.MockTransport(answer))
        with AttemptReporter(client, claim(), heartbeat_seconds=0.05) as reporter:
            assert cancelled.wait(5)
            assert reporter.cancelled.wait(5)

    def test_a_heartbeat_carries_the_newest_progress(self):
        api = FakeApi()
        reporter = reporter_for(api, heartbeat_seconds=0.02)
        # Reported before the heart starts beating, so the first beat sees both.
        reporter.batch_progress(progress(10))
        reporter.batch_progress(progress(20))
        with reporter:
            body = first_heartbeat(api)
        assert body["progress"] == progress(20).model_dump(mode="json")
        assert (body["attempt"], body["lease_token"]) == (2, "t" * 32)

    def test_a_heartbeat_before_any_progress_carries_none(self):
        api = FakeApi()
        with reporter_for(api, heartbeat_seconds=0.02):
            body = first_heartbeat(api)
        assert body["progress"] is None

    def test_progress_reported_between_beats_goes_with_the_next(self):
        api = FakeApi()
        with reporter_for(api, heartbeat_seconds=0.02) as reporter:
            first_heartbeat(api)
            reporter.batch_progress(progress(30))
            body = first_heartbeat(api, lambda body: body["progress"] is not None)
        assert body["progress"]["batches_completed"] == 30

    def test_an_orphaned_training_process_stops(self):
        api = FakeApi()
        with reporter_for(api, heartbeat_seconds=0.05) as reporter:
            reporter._parent = -1  # as if the worker's main process had died
            assert reporter.lost.wait(5)
            assert reporter.should_stop()

    def test_finish_delivers_pending_epochs_first_and_reports_error_and_result(self):
        api = FakeApi()
        curve = JobResult(
            lr_range_test=LrRangeResult(
                points=[], suggested_lr=0.1, min_loss_lr=0.3, diverged_at_lr=None
            )
        )
        with reporter_for(api) as reporter:
            reporter.epoch_finished(metrics(0), None)
            reporter.finish("failed", JobError(type="diverged", message="lower the lr"), curve)
        assert [r.url.path.rsplit("/", 1)[1] for r in api.requests] == ["epochs", "finish"]
        finish = api.bodies()[1]
        assert finish["error"] == {"type": "diverged", "message": "lower the lr"}
        assert finish["result"]["lr_range_test"]["suggested_lr"] == 0.1

    def test_a_handback_follows_the_last_epoch(self):
        api = FakeApi()
        with reporter_for(api) as reporter:
            reporter.epoch_finished(metrics(0), None)
            reporter.hand_back(retry_seconds=5)
        assert [r.url.path.rsplit("/", 1)[1] for r in api.requests] == ["epochs", "release"]
        assert api.bodies()[1] == {"attempt": 2, "lease_token": "t" * 32}


class TestDescribeFailure:
    def test_out_of_memory_says_what_to_change(self):
        error = describe_failure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
        assert error.type == "out_of_memory"
        assert "batch_size" in error.message

    def test_divergence_says_to_lower_the_learning_rate(self):
        error = describe_failure(TrainingDiverged("the training loss became nan in epoch 3"))
        assert error.type == "diverged"
        assert "lower the learning rate" in error.message

    def test_other_errors_keep_their_first_line_only(self):
        error = describe_failure(ValueError("bad thing\nTraceback (most recent call last):"))
        assert (error.type, error.message) == ("ValueError", "bad thing")


def checkpoint_file(folder: Path, epoch: int = 0) -> CheckpointRecord:
    """A checkpoint file in the worker's folder, as the trainer leaves it, and its record."""
    name = f"epoch-{epoch:03d}.pt"
    payload = f"weights of epoch {epoch}".encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(payload)
    return CheckpointRecord(
        name=name,
        path=f"job_1/{name}",
        epoch=epoch,
        test_accuracy=0.9,
        sha256=hashlib.sha256(payload).hexdigest(),
        bytes=len(payload),
    )


def uploading_reporter(api: FakeApi, folder: Path, retry_seconds: float = 5.0) -> AttemptReporter:
    return AttemptReporter(api.client(retry_seconds), claim(), 60, checkpoint_folder=folder)


def routes(api: FakeApi) -> list[tuple[str, str]]:
    return [(r.method, r.url.path.rsplit("/", 1)[1]) for r in api.requests]


class TestCheckpointUploads:
    def test_the_checkpoint_is_uploaded_before_its_epoch_is_posted(self, tmp_path):
        api = FakeApi(httpx.Response(201, json={}))
        record = checkpoint_file(tmp_path)
        with uploading_reporter(api, tmp_path) as reporter:
            reporter.epoch_finished(metrics(0), record)
            reporter.flush()
        assert routes(api) == [("PUT", "epoch-000.pt"), ("POST", "epochs")]
        upload = api.requests[0]
        assert upload.url.path == "/internal/v1/jobs/job_1/checkpoints/epoch-000.pt"
        assert upload.headers["x-attempt"] == "2"
        assert upload.headers["x-lease-token"] == "t" * 32
        assert upload.headers["x-checkpoint-sha256"] == record.sha256
        assert upload.headers["content-length"] == str(record.bytes)
        assert upload.headers["content-type"] == "application/octet-stream"
        assert "transfer-encoding" not in upload.headers
        assert upload.content == (tmp_path / record.name).read_bytes()
        assert json.loads(api.requests[1].content)["checkpoint"] == record.model_dump()

    def test_an_upload_is_retried_through_an_outage(self, tmp_path):
        api = FakeApi(httpx.ConnectError("down"), httpx.Response(503), httpx.Response(201))
        record = checkpoint_file(tmp_path)
        with uploading_reporter(api, tmp_path) as reporter:
            reporter.epoch_finished(metrics(0), record)
            reporter.flush()
        assert routes(api) == [("PUT", "epoch-000.pt")] * 3 + [("POST", "epochs")]
        # The whole file each time, not what was left of a stream read once.
        assert {r.content for r in api.requests[:3]} == {(tmp_path / record.name).read_bytes()}
        assert json.loads(api.requests[3].content)["checkpoint"]["name"] == "epoch-000.pt"

    @pytest.mark.parametrize(
        "failures",
        [
            [httpx.Response(413, json={"detail": "too large"})],
            [httpx.Response(422, json={"detail": "sha256 mismatch"})],
            # Tries at 0, 0.2 and 0.6 s fill the half-second retry window.
            [httpx.ConnectError("down")] * 3,
        ],
        ids=["too-large", "mismatch", "unreachable"],
    )
    def test_an_upload_given_up_on_posts_the_epoch_without_it(self, tmp_path, failures):
        api = FakeApi(*failures)
        record = checkpoint_file(tmp_path)
        with uploading_reporter(api, tmp_path, retry_seconds=0.5) as reporter:
            reporter.epoch_finished(metrics(0), record)
            reporter.flush()
            assert not reporter.should_stop()
        assert routes(api) == [("PUT", "epoch-000.pt")] * len(failures) + [("POST", "epochs")]
        epoch_post = json.loads(api.requests[-1].content)
        assert epoch_post["metrics"]["epoch"] == 0
        assert epoch_post["checkpoint"] is None

    def test_a_checkpoint_file_gone_from_the_folder_posts_the_epoch_without_it(self, tmp_path):
        api = FakeApi()
        record = checkpoint_file(tmp_path)
        (tmp_path / record.name).unlink()
        with uploading_reporter(api, tmp_path) as reporter:
            reporter.epoch_finished(metrics(0), record)
            reporter.flush()
        assert routes(api) == [("POST", "epochs")]
        assert api.bodies()[0]["checkpoint"] is None

    def test_an_upload_refused_as_stale_stops_training_and_posts_nothing(self, tmp_path):
        api = FakeApi(httpx.Response(409, json={"detail": "stale"}))
        with uploading_reporter(api, tmp_path) as reporter:
            reporter.epoch_finished(metrics(0), checkpoint_file(tmp_path))
            reporter.flush()
            assert reporter.lost.is_set() and reporter.should_stop()
        assert routes(api) == [("PUT", "epoch-000.pt")]

    def test_an_epoch_whose_checkpoint_is_not_recorded_is_posted_again_without_it(self, tmp_path):
        refusal = {"type": "urn:tunelab:problem:checkpoint-not-stored", "detail": "not stored"}
        api = FakeApi(httpx.Response(201), httpx.Response(422, json=refusal))
        with uploading_reporter(api, tmp_path) as reporter:
            reporter.epoch_finished(metrics(0), checkpoint_file(tmp_path))
            reporter.flush()
            assert not reporter.should_stop()
        assert routes(api) == [("PUT", "epoch-000.pt"), ("POST", "epochs"), ("POST", "epochs")]
        posts = [json.loads(request.content) for request in api.requests[1:]]
        assert [post["checkpoint"] is None for post in posts] == [False, True]

    def test_an_upload_does_not_hold_up_the_heartbeat(self, tmp_path):
        upload_started, beat_during_upload = threading.Event(), threading.Event()

        def answer(request: httpx.Request) -> httpx.Response:
            if request.method == "PUT":
                upload_started.set()
                # The upload lasts until a heartbeat got through beside it.
                assert beat_during_upload.wait(5)
                return httpx.Response(201)
            if request.url.path.endswith("/heartbeat") and upload_started.is_set():
                beat_during_upload.set()
            return httpx.Response(200, json={"cancelled": False})

        client = ApiClient("http://api", "t", transport=httpx.MockTransport(answer))
        record = checkpoint_file(tmp_path)
        with AttemptReporter(client, claim(), 0.02, checkpoint_folder=tmp_path) as reporter:
            reporter.epoch_finished(metrics(0), record)
            reporter.flush()
        assert beat_during_upload.is_set()


class TestFileTransfers:
    def test_a_download_lands_whole_with_its_sha256(self, tmp_path):
        payload = b"x" * (3 * 1024 * 1024 + 5)
        api = FakeApi(httpx.Response(503), httpx.Response(200, content=payload))
        target = tmp_path / "epoch-000.pt"
        assert api.client().get_file("/f", target) == hashlib.sha256(payload).hexdigest()
        assert target.read_bytes() == payload
        assert [p.name for p in tmp_path.iterdir()] == ["epoch-000.pt"]

    def test_a_refused_download_leaves_nothing_behind(self, tmp_path):
        api = FakeApi(httpx.Response(404, json={"detail": "no such checkpoint"}))
        with pytest.raises(ApiRefused) as refused:
            api.client().get_file("/f", tmp_path / "epoch-000.pt")
        assert refused.value.status == 404
        assert list(tmp_path.iterdir()) == []

    def test_a_transfer_gives_up_at_the_deadline_naming_its_method(self, tmp_path):
        (tmp_path / "f.pt").write_bytes(b"x")
        api = FakeApi(*[httpx.ConnectError("down")] * 50)
        with pytest.raises(ApiUnreachable, match="PUT /f failed until the deadline"):
            api.client(retry_seconds=0.01).put_file("/f", tmp_path / "f.pt", {})
