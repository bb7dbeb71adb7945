"""Resuming from a checkpoint ends exactly where an uninterrupted run ends, on CPU."""

import hashlib
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.messages import CheckpointRecord
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.reporters import KilledAfter, RecordingReporter, WorkerKilled
from tests.unit.worker.small_jobs import CPU_FP32, small_job, small_layers
from worker.training.checkpoints import Checkpointing, CheckpointUnusable, load_checkpoint
from worker.training.data import MnistTensors, load_mnist
from worker.training.loop import TrainingHandedBack, train

EPOCHS = 4


@dataclass
class ShuttingDown(RecordingReporter):
    """A SIGTERM that arrives after `after_batches` batches, with `grace` seconds to go."""

    after_batches: int = 0
    grace: float = 0.0
    deadline: float | None = None

    def handback_deadline(self) -> float | None:
        if self.deadline is None and self.stop_questions > self.after_batches:
            self.deadline = time.monotonic() + self.grace
        return self.deadline


@pytest.fixture
def mnist(tmp_path: Path) -> MnistTensors:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir, train=512, test=256)
    return load_mnist(data_dir)


def dropout_layers() -> list[dict[str, Any]]:
    return [*small_layers()[:-1], {"type": "dropout", "p": 0.2}, small_layers()[-1]]


# Each one exercises a different part of the saved state: batch-wise and epoch-wise
# schedules, a warm-up cut in the middle, momentum, dropout's and augmentation's RNG, and a
# batch size that changes after the interruption.
RESUMABLE_SPECS = {
    "onecycle-sgd-momentum": {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
        "schedule": {"name": "onecycle", "max_lr": 0.1},
    },
    "step-adam-dropout": {
        "model": {"layers": dropout_layers()},
        "schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
    },
    "cosine-warmup-augment": {
        "schedule": {"name": "cosine", "warmup_epochs": 2},
        "data": {"train_subset": 384, "augment": {"rotation_degrees": 10, "translate": 0.1}},
    },
    "plateau-batch-size-schedule": {
        "optimizer": {"name": "rmsprop", "lr": 0.001},
        "schedule": {"name": "plateau", "patience": 0},
        "batch_size_schedule": [{"epoch": 0, "batch_size": 64}, {"epoch": 2, "batch_size": 32}],
    },
}


class TestResume:
    @pytest.mark.parametrize("fields", RESUMABLE_SPECS.values(), ids=RESUMABLE_SPECS.keys())
    def test_interrupted_and_resumed_ends_with_the_same_metrics(self, mnist, tmp_path, fields):
        spec = small_job(epochs=EPOCHS, **fields)
        straight = RecordingReporter()
        train(spec, mnist, straight, Checkpointing(tmp_path / "straight", "job"), hardware=CPU_FP32)

        checkpointing = Checkpointing(tmp_path / "interrupted", "job")
        first = KilledAfter(kill_after_epoch=1)
        with pytest.raises(WorkerKilled):
            train(spec, mnist, first, checkpointing, hardware=CPU_FP32)
        records = [record for record in first.checkpoints if record is not None]
        newest = checkpointing.newest_usable(records)
        assert newest is not None and newest[0].epoch == 1
        second = RecordingReporter()
        train(spec, mnist, second, checkpointing, hardware=CPU_FP32, resume=newest[1])

        assert [row.epoch for row in second.rows] == [2, 3]
        for resumed, reference in zip(second.rows, straight.rows[2:], strict=True):
            assert resumed.model_dump(exclude={"epoch_seconds", "images_per_second"}) == (
                reference.model_dump(exclude={"epoch_seconds", "images_per_second"})
            )

    def test_a_corrupt_newest_checkpoint_is_skipped(self, mnist, tmp_path):
        checkpointing = Checkpointing(tmp_path, "job")
        reporter = RecordingReporter()
        train(small_job(epochs=3), mnist, reporter, checkpointing, hardware=CPU_FP32)
        records = [record for record in reporter.checkpoints if record is not None]
        newest_path = tmp_path / records[-1].path
        newest_path.write_bytes(newest_path.read_bytes()[:100])  # a half-written file
        newest = checkpointing.newest_usable(records)
        assert newest is not None
        assert newest[0].epoch == 1 and newest[1]["epoch"] == 1

    def test_a_record_pointing_outside_the_job_folder_is_skipped(self, tmp_path):
        checkpointing = Checkpointing(tmp_path / "artifacts", "job")
        elsewhere = Checkpointing(tmp_path / "artifacts", "other-job")
        record = elsewhere.write(0, {"weights": torch.ones(1)}, test_accuracy=0.5)
        assert checkpointing.newest_usable([record]) is None


class TestFetchingCheckpoints:
    """Records name checkpoints the worker's folder may not hold: fetched there, then loaded."""

    def written(self, folder: Path, epochs: int) -> list[CheckpointRecord]:
        checkpointing = Checkpointing(folder, "job")
        return [checkpointing.write(epoch, {"epoch": epoch}, 0.5) for epoch in range(epochs)]

    def test_a_checkpoint_missing_here_is_fetched_and_loaded(self, tmp_path):
        records = self.written(tmp_path / "api", 2)
        fetched: list[str] = []

        def fetch(record: CheckpointRecord, target: Path) -> None:
            fetched.append(record.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((tmp_path / "api" / record.path).read_bytes())

        newest = Checkpointing(tmp_path / "worker", "job").newest_usable(records, fetch)
        assert newest is not None and newest[1]["epoch"] == 1
        assert fetched == ["epoch-001.pt"]

    def test_one_intact_here_is_not_fetched(self, tmp_path):
        records = self.written(tmp_path, 1)

        def fetch(record: CheckpointRecord, target: Path) -> None:
            raise AssertionError("fetched a checkpoint the folder holds")

        assert Checkpointing(tmp_path, "job").newest_usable(records, fetch) is not None

    def test_one_that_cannot_be_fetched_is_skipped_for_the_one_before(self, tmp_path):
        records = self.written(tmp_path / "api", 2)

        def fetch(record: CheckpointRecord, target: Path) -> None:
            if record.epoch == 1:
                raise CheckpointUnusable(f"{record.name} could not be downloaded: 404")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((tmp_path / "api" / record.path).read_bytes())

        newest = Checkpointing(tmp_path / "worker", "job").newest_usable(records, fetch)
        assert newest is not None and newest[0].epoch == 0


class TestLoadCheckpoint:
    def test_refuses_bytes_that_do_not_match_the_recorded_sha256(self, tmp_path):
        record = Checkpointing(tmp_path, "job").write(0, {"w": torch.ones(1)}, 0.5)
        with pytest.raises(CheckpointUnusable, match="SHA-256"):
            load_checkpoint(tmp_path / record.path, "0" * 64)

    def test_refuses_a_missing_file(self, tmp_path):
        with pytest.raises(CheckpointUnusable, match="cannot be read"):
            load_checkpoint(tmp_path / "nothing.pt", "0" * 64)

    def test_refuses_a_pickle_that_is_not_plain_weights(self, tmp_path):
        planted = tmp_path / "planted.pt"
        planted.write_bytes(pickle.dumps({"weights": Path("/")}))
        sha256 = hashlib.sha256(planted.read_bytes()).hexdigest()
        with pytest.raises(CheckpointUnusable, match="not a loadable checkpoint"):
            load_checkpoint(planted, sha256)


class TestHandback:
    def test_stops_before_training_when_the_epoch_cannot_finish_in_time(self, mnist):
        reporter = ShuttingDown(after_batches=3, grace=0.0)
        with pytest.raises(TrainingHandedBack) as handed_back:
            train(small_job(), mnist, reporter, hardware=CPU_FP32)
        assert reporter.stop_questions == 4
        assert handed_back.value.epochs_completed == 0
        assert reporter.rows == []

    def test_finishes_and_reports_the_epoch_when_it_fits_in_the_grace_period(self, mnist):
        reporter = ShuttingDown(after_batches=3, grace=600)
        with pytest.raises(TrainingHandedBack) as handed_back:
            train(small_job(epochs=3), mnist, reporter, hardware=CPU_FP32)
        assert handed_back.value.epochs_completed == 1
        assert [row.epoch for row in reporter.rows] == [0]

    def test_a_job_that_ends_with_the_epoch_is_not_handed_back(self, mnist):
        reporter = ShuttingDown(after_batches=3, grace=600)
        result = train(small_job(epochs=1), mnist, reporter, hardware=CPU_FP32)
        assert result.epochs_completed == 1
