import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from shared.messages import BatchProgress, LrRangePoint
from shared.spec import JobSpec
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.reporters import RecordingReporter
from tests.unit.worker.small_jobs import CPU_FP32, small_job
from worker.training.data import load_mnist
from worker.training.device import Hardware
from worker.training.loop import TrainingStopped, train
from worker.training.lr_range import lr_range_test, suggest
from worker.training.progress import PROGRESS_INTERVAL

# The synthetic classes are fixed pixel patterns: a linear layer on the pixels learns them.
SMALL_MODEL = {"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 10}]}
# Without batch norm, a hidden layer blows up once the lr passes about 1.
FRAGILE_MODEL = {
    "layers": [
        {"type": "conv", "out_channels": 4},
        {"type": "flatten"},
        {"type": "linear", "out_features": 32, "activation": "relu"},
        {"type": "linear", "out_features": 10},
    ]
}


class Never:
    def should_stop(self) -> bool:
        return False

    def handback_deadline(self) -> float | None:
        return None

    def epoch_finished(self, metrics, checkpoint) -> None:
        raise AssertionError("an LR range test has no epochs")

    def batch_progress(self, progress: BatchProgress) -> None:
        pass


class Watched(Never):
    def __init__(self) -> None:
        self.progress: list[BatchProgress] = []

    def batch_progress(self, progress: BatchProgress) -> None:
        self.progress.append(progress)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_synthetic_mnist(folder, train=512, test=64)
    return load_mnist(folder)


def range_job(model: dict = SMALL_MODEL, **settings: float) -> JobSpec:
    return JobSpec.model_validate(
        {"kind": "lr_range_test", "model": model, "batch_size": 64, "lr_range_test": settings}
    )


class TestLrRangeTest:
    def test_the_lr_grows_exponentially_from_start_to_end(self, mnist):
        result = lr_range_test(
            range_job(start_lr=1e-4, end_lr=1e-1, steps=40, divergence_factor=1e6),
            mnist,
            Never(),
            CPU_FP32,
        )
        lrs = [point.lr for point in result.points]
        assert len(lrs) == 40
        assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-1)
        ratios = {round(after / before, 9) for before, after in zip(lrs, lrs[1:], strict=False)}
        assert len(ratios) == 1
        assert result.suggested_lr is not None and 1e-4 <= result.suggested_lr <= 1e-1

    def test_it_stops_once_the_loss_blows_up(self, mnist):
        result = lr_range_test(
            range_job(FRAGILE_MODEL, start_lr=1e-3, end_lr=10.0, steps=60),
            mnist,
            Never(),
            CPU_FP32,
        )
        assert result.diverged_at_lr is not None
        assert len(result.points) < 60
        assert result.suggested_lr < result.diverged_at_lr

    def test_it_reports_its_steps_as_the_progress_of_its_phase(self, mnist):
        watched = Watched()
        spec = range_job(start_lr=1e-4, end_lr=1e-1, steps=30, divergence_factor=1e6)
        started = time.perf_counter()
        lr_range_test(spec, mnist, watched, CPU_FP32)
        elapsed = time.perf_counter() - started
        assert {(p.phase, p.epoch, p.batches) for p in watched.progress} == {
            ("lr_range_test", 0, 30)
        }
        completed = [p.batches_completed for p in watched.progress]
        assert completed[0] == 0 and completed[-1] == 30
        assert completed == sorted(completed)
        # When the sweep begins, after its last step, and at most once an interval between.
        assert len(completed) <= 2 + elapsed / PROGRESS_INTERVAL
        last = watched.progress[-1]
        assert last.images_per_second > 0 and last.eta_seconds == 0.0

    def test_it_stops_when_asked(self, mnist):
        class Cancelled(Never):
            def should_stop(self) -> bool:
                return True

            def handback_deadline(self) -> float | None:
                return None

        with pytest.raises(TrainingStopped):
            lr_range_test(range_job(steps=10), mnist, Cancelled(), CPU_FP32)

    def test_it_trains_under_the_same_autocast_as_training(self, mnist):
        """With bf16 on, both the sweep and training run their layers in bf16: a curve
        measured at another precision would not say what training can take."""
        bf16 = Hardware(torch.device("cpu"), bf16=True)
        with linear_output_dtypes() as swept:
            lr_range_test(range_job(steps=10), mnist, Never(), bf16)
        with linear_output_dtypes() as trained:
            spec = small_job(epochs=1, data={"train_subset": 128})
            train(spec, mnist, RecordingReporter(), hardware=bf16)
        assert swept == trained == {torch.bfloat16}


@contextmanager
def linear_output_dtypes() -> Iterator[set[torch.dtype]]:
    """The dtypes every nn.Linear of any model gives out while the block runs."""
    dtypes: set[torch.dtype] = set()

    def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            dtypes.add(output.dtype)

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        yield dtypes
    finally:
        handle.remove()


class TestSuggest:
    def test_picks_the_steepest_fall_before_the_lowest_loss(self):
        lrs = [10 ** (-5 + i * 0.5) for i in range(9)]
        losses = [2.3, 2.3, 2.2, 1.5, 0.6, 0.4, 0.35, 0.9, 3.0]
        points = [
            LrRangePoint(lr=lr, loss=loss, smoothed_loss=loss)
            for lr, loss in zip(lrs, losses, strict=True)
        ]
        steepest, lowest = suggest(points)
        assert steepest == pytest.approx(lrs[4])
        assert lowest == pytest.approx(lrs[6])

    def test_too_few_points_suggest_nothing(self):
        assert suggest([LrRangePoint(lr=0.1, loss=1.0, smoothed_loss=1.0)]) == (None, None)


class TestSpec:
    def test_start_must_be_below_end(self):
        with pytest.raises(ValidationError, match="start_lr must be below end_lr"):
            range_job(start_lr=0.1, end_lr=0.01)

    def test_defaults_sweep_six_decades(self):
        settings = JobSpec.model_validate({"kind": "lr_range_test"}).lr_range_test
        assert math.log10(settings.end_lr / settings.start_lr) == pytest.approx(5)
