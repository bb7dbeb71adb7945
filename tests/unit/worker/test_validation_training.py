"""The training loop with a validation split, and the same metrics from the same spec."""

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.messages import EpochMetrics
from shared.spec import JobSpec
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.reporters import RecordingReporter
from tests.unit.worker.small_jobs import CPU_FP32, small_job
from worker.training import loop
from worker.training.checkpoints import Checkpointing
from worker.training.data import MnistTensors, Split, load_mnist
from worker.training.determinism import (
    CUBLAS_WORKSPACE_CONFIG,
    DeterminismUnavailable,
    deterministic_algorithms,
)
from worker.training.loop import train
from worker.training.model import SpatialMean, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VALIDATION = 100
# Timings differ from run to run; every other field is a result of the training.
TIMINGS = {"epoch_seconds", "images_per_second"}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> MnistTensors:
    data_dir = tmp_path_factory.mktemp("data")
    write_synthetic_mnist(data_dir, train=512, test=256)
    return load_mnist(data_dir)


def trained(spec: JobSpec, mnist: MnistTensors, **kwargs) -> RecordingReporter:
    reporter = RecordingReporter()
    train(spec, mnist, reporter, hardware=CPU_FP32, **kwargs)
    return reporter


def results(rows: list[EpochMetrics]) -> list[dict]:
    return [row.model_dump(exclude=TIMINGS) for row in rows]


class TestValidationMetrics:
    def test_every_epoch_reports_the_validation_loss_and_accuracy(self, mnist):
        rows = trained(small_job(data={"validation": VALIDATION}), mnist).rows
        assert [row.epoch for row in rows] == [0, 1]
        for row in rows:
            assert row.val_loss is not None and row.val_loss > 0
            assert row.val_accuracy is not None and 0 <= row.val_accuracy <= 1
        # Held out from the same synthetic digits it learns: well above chance (0.1).
        assert rows[-1].val_accuracy > 0.6

    def test_without_validation_they_are_none(self, mnist):
        rows = trained(small_job(), mnist).rows
        assert [(row.val_loss, row.val_accuracy) for row in rows] == [(None, None)] * 2

    def test_the_test_set_is_still_reported_every_epoch(self, mnist):
        rows = trained(small_job(data={"validation": VALIDATION}), mnist).rows
        assert all(row.test_loss > 0 and 0 < row.test_accuracy <= 1 for row in rows)

    def test_checkpoints_record_the_epochs_validation_accuracy(self, mnist, tmp_path: Path):
        reporter = RecordingReporter()
        spec = small_job(data={"validation": VALIDATION})
        train(spec, mnist, reporter, Checkpointing(tmp_path, "job-v"), hardware=CPU_FP32)
        assert [c.val_accuracy for c in reporter.checkpoints if c is not None] == [
            row.val_accuracy for row in reporter.rows
        ]

    def test_the_result_says_what_it_trained_and_validated_on(self, mnist):
        spec = small_job(data={"validation": VALIDATION, "train_subset": 300})
        result = train(spec, mnist, RecordingReporter(), hardware=CPU_FP32)
        assert result.split is not None
        assert (result.split.train_images, result.split.validation_images) == (300, VALIDATION)


def scripted_evaluation(validation_losses: list[float], test_losses: list[float]):
    """Stands for `evaluate`: the validation split (told apart by its size) and the test split
    each get their loss of the epoch in turn."""
    calls = {VALIDATION: iter(validation_losses), "test": iter(test_losses)}

    def evaluate(model: nn.Module, split: Split, *_args: object) -> tuple[float, float]:
        losses = calls[VALIDATION] if len(split) == VALIDATION else calls["test"]
        return next(losses), 0.5

    return evaluate


class TestPlateauFollowsValidation:
    """The validation loss only worsens while the test loss only improves: the lr drops after
    each epoch but the first if the schedule watches validation, never if it watched test."""

    EPOCHS = 4
    PLATEAU = {"name": "plateau", "factor": 0.5, "patience": 0, "threshold": 0.0}

    def lrs(self, mnist, monkeypatch, data: dict) -> list[float]:
        worsening = [1.0 + epoch for epoch in range(self.EPOCHS)]
        improving = [1.0 / (1 + epoch) for epoch in range(self.EPOCHS)]
        monkeypatch.setattr(loop, "evaluate", scripted_evaluation(worsening, improving))
        spec = small_job(schedule=self.PLATEAU, epochs=self.EPOCHS, data=data)
        return [row.lr for row in trained(spec, mnist).rows]

    def test_with_validation_it_steps_on_the_validation_loss(self, mnist, monkeypatch):
        lrs = self.lrs(mnist, monkeypatch, {"validation": VALIDATION, "train_subset": 256})
        # Epoch 0 sets the best; each worse one after it halves the next epoch's lr.
        assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.0025])

    def test_without_validation_it_steps_on_the_test_loss(self, mnist, monkeypatch):
        # The same scripted test losses, now the only ones: improving, so the lr stays.
        improving = [1.0 / (1 + epoch) for epoch in range(self.EPOCHS)]
        monkeypatch.setattr(loop, "evaluate", scripted_evaluation([], improving))
        spec = small_job(schedule=self.PLATEAU, epochs=self.EPOCHS)
        assert [row.lr for row in trained(spec, mnist).rows] == [0.01] * self.EPOCHS


class TestSameSpecSameMetrics:
    """Trained twice in one process on the CPU, the same spec and seed give the same numbers,
    bit for bit: every metric of every epoch but the timings."""

    def test_by_default(self, mnist):
        spec = small_job(seed=4)
        assert results(trained(spec, mnist).rows) == results(trained(spec, mnist).rows)

    def test_with_validation_augmentation_and_deterministic_algorithms(self, mnist):
        spec = small_job(
            seed=4,
            deterministic=True,
            data={
                "validation": VALIDATION,
                "train_subset": 300,
                "augment": {"rotation_degrees": 10, "translate": 0.1},
            },
            model={
                "layers": [
                    {"type": "conv", "out_channels": 8},
                    {"type": "maxpool", "kernel_size": 2},
                    {"type": "conv", "out_channels": 10},
                    {"type": "gap"},
                ]
            },
        )
        first, second = trained(spec, mnist).rows, trained(spec, mnist).rows
        assert results(first) == results(second)
        assert all(row.val_accuracy is not None for row in first)

    def test_another_seed_gives_other_numbers(self, mnist):
        # The comparison above can fail: the metrics do depend on the seed.
        one = results(trained(small_job(seed=4), mnist).rows)
        assert one != results(trained(small_job(seed=5), mnist).rows)


class TestDeterministicAlgorithms:
    def test_on_within_and_as_before_after(self):
        assert not torch.are_deterministic_algorithms_enabled()
        with deterministic_algorithms(True, torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.backends.cudnn.benchmark
            assert torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic

    def test_put_back_when_training_fails(self):
        with pytest.raises(RuntimeError, match="boom"):
            with deterministic_algorithms(True, torch.device("cpu")):
                raise RuntimeError("boom")
        assert not torch.are_deterministic_algorithms_enabled()

    def test_not_asked_changes_nothing(self):
        with deterministic_algorithms(False, torch.device("cpu")):
            assert not torch.are_deterministic_algorithms_enabled()

    def test_the_training_loop_asks_for_them_when_the_spec_does(self, mnist, monkeypatch):
        seen = []

        def evaluate(*_args: object) -> tuple[float, float]:
            seen.append(torch.are_deterministic_algorithms_enabled())
            return 1.0, 0.5

        monkeypatch.setattr(loop, "evaluate", evaluate)
        trained(small_job(deterministic=True, epochs=1), mnist)
        trained(small_job(epochs=1), mnist)
        assert seen == [True, False]
        assert not torch.are_deterministic_algorithms_enabled()

    def test_cuda_without_the_cublas_workspace_is_refused_before_anything_runs(self, monkeypatch):
        # A device object only: nothing here touches CUDA.
        monkeypatch.delenv(CUBLAS_WORKSPACE_CONFIG, raising=False)
        with pytest.raises(DeterminismUnavailable, match=":4096:8"):
            with deterministic_algorithms(True, torch.device("cuda")):
                pytest.fail("entered without the workspace configuration")
        assert not torch.are_deterministic_algorithms_enabled()

    def test_cuda_with_the_cublas_workspace_is_allowed(self, monkeypatch):
        monkeypatch.setenv(CUBLAS_WORKSPACE_CONFIG, ":4096:8")
        with deterministic_algorithms(True, torch.device("cuda")):
            assert torch.are_deterministic_algorithms_enabled()

    def test_a_worker_process_sets_the_cublas_workspace_when_it_starts(self, monkeypatch):
        from shared.settings import Settings
        from worker.runtime import configure_torch

        monkeypatch.delenv(CUBLAS_WORKSPACE_CONFIG, raising=False)
        threads = torch.get_num_threads()
        try:
            configure_torch(Settings(torch_threads=1))
        finally:
            torch.set_num_threads(threads)
        assert os.environ[CUBLAS_WORKSPACE_CONFIG] == ":4096:8"


class TestSpatialMean:
    """A deterministic job's global average pooling: the same numbers, the same checkpoint."""

    LAYERS = [{"type": "conv", "out_channels": 10}, {"type": "gap"}]

    def models(self) -> tuple[nn.Sequential, nn.Sequential]:
        spec = JobSpec.model_validate({"model": {"layers": self.LAYERS}})
        assert spec.model.layers is not None
        return (
            build_model(spec.model.layers),
            build_model(spec.model.layers, deterministic=True),
        )

    def test_replaces_adaptive_pooling_in_a_deterministic_model(self):
        plain, deterministic = self.models()
        assert [type(m) for m in plain[1]] == [nn.AdaptiveAvgPool2d, nn.Flatten]
        assert [type(m) for m in deterministic[1]] == [SpatialMean]

    def test_the_same_outputs_and_state_dict(self):
        plain, deterministic = self.models()
        deterministic.load_state_dict(plain.state_dict())
        images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(deterministic(images), plain(images))
        assert plain.state_dict().keys() == deterministic.state_dict().keys()
