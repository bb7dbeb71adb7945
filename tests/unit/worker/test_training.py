import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import SGD, Optimizer, lr_scheduler

from shared.spec import JobSpec
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.cpu_flags import cpuinfo_opens
from tests.unit.worker.reporters import RecordingReporter
from tests.unit.worker.small_jobs import (
    CPU,
    CPU_FP32,
    TRAIN_SUBSET,
    conv,
    small_job,
    small_layers,
)
from worker.training.checkpoints import Checkpointing
from worker.training.data import MNIST_MEAN, MNIST_STD, InputTransform, MnistTensors, load_mnist
from worker.training.loop import TrainingStopped, train
from worker.training.model import build_for_training, build_model
from worker.training.optimizers import build_optimizer
from worker.training.schedules import LearningRateController, batches_per_epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def mnist(tmp_path: Path) -> MnistTensors:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir, train=512, test=256)
    return load_mnist(data_dir)


class TestTrain:
    def test_reports_one_row_per_epoch_counted_from_zero(self, mnist):
        reporter = RecordingReporter()
        result = train(small_job(), mnist, reporter, hardware=CPU_FP32)
        assert [row.epoch for row in reporter.rows] == [0, 1]
        assert result.epochs_completed == 2
        assert result.final == reporter.rows[-1]
        assert reporter.checkpoints == [None, None]

    def test_rows_record_the_lr_and_batch_size_each_epoch_started_with(self, mnist):
        spec = small_job(
            schedule={"name": "step", "step_size": 1, "gamma": 0.5},
            batch_size_schedule=[{"epoch": 0, "batch_size": 64}, {"epoch": 1, "batch_size": 32}],
        )
        reporter = RecordingReporter()
        train(spec, mnist, reporter, hardware=CPU_FP32)
        assert [row.lr for row in reporter.rows] == pytest.approx([0.01, 0.005])
        assert [row.batch_size for row in reporter.rows] == [64, 32]

    def test_trains_on_the_subset_in_batches_of_the_epoch(self, mnist):
        spec = small_job(
            batch_size_schedule=[{"epoch": 0, "batch_size": 64}, {"epoch": 1, "batch_size": 32}]
        )
        reporter = RecordingReporter()
        train(spec, mnist, reporter, hardware=CPU_FP32)
        # The loop asks once before every batch.
        assert reporter.stop_questions == TRAIN_SUBSET // 64 + TRAIN_SUBSET // 32

    def test_learns_the_synthetic_digits_well_above_chance(self, mnist):
        reporter = RecordingReporter()
        train(small_job(), mnist, reporter, hardware=CPU_FP32)
        final = reporter.rows[-1]
        # Ten classes: chance is 0.1.
        assert final.test_accuracy > 0.6
        assert final.train_accuracy > 0.6


class TestStopping:
    def test_stop_before_the_first_batch_raises_and_reports_nothing(self, mnist):
        reporter = RecordingReporter(stop_after=0)
        with pytest.raises(TrainingStopped):
            train(small_job(), mnist, reporter, hardware=CPU_FP32)
        assert reporter.rows == []

    def test_stop_within_the_second_epoch_keeps_the_first_epochs_row(self, mnist):
        batches = TRAIN_SUBSET // 64
        reporter = RecordingReporter(stop_after=batches + 2)
        with pytest.raises(TrainingStopped):
            train(small_job(), mnist, reporter, hardware=CPU_FP32)
        assert [row.epoch for row in reporter.rows] == [0]
        assert reporter.stop_questions == batches + 3


class TestCheckpointing:
    @pytest.fixture
    def trained(self, mnist, tmp_path: Path) -> tuple[JobSpec, Path, RecordingReporter]:
        spec = small_job()
        artifacts = tmp_path / "artifacts"
        reporter = RecordingReporter()
        train(spec, mnist, reporter, Checkpointing(artifacts, "job-7"), hardware=CPU_FP32)
        return spec, artifacts, reporter

    def test_one_file_per_epoch_under_the_job_folder(self, trained):
        _, artifacts, reporter = trained
        assert sorted(path.name for path in (artifacts / "job-7").iterdir()) == [
            "epoch-000.pt",
            "epoch-001.pt",
        ]
        assert [record.path for record in reporter.checkpoints] == [
            "job-7/epoch-000.pt",
            "job-7/epoch-001.pt",
        ]
        assert [record.epoch for record in reporter.checkpoints] == [0, 1]

    def test_records_the_sha256_and_size_of_the_file_bytes(self, trained):
        _, artifacts, reporter = trained
        for record in reporter.checkpoints:
            payload = (artifacts / record.path).read_bytes()
            assert record.sha256 == hashlib.sha256(payload).hexdigest()
            assert record.bytes == len(payload)

    def test_records_the_epochs_test_accuracy(self, trained):
        _, _, reporter = trained
        accuracies = [row.test_accuracy for row in reporter.rows]
        assert [record.test_accuracy for record in reporter.checkpoints] == accuracies

    def test_loads_with_weights_only_into_a_fresh_model(self, trained):
        spec, artifacts, reporter = trained
        state = torch.load(artifacts / reporter.checkpoints[-1].path, weights_only=True)
        assert state["epoch"] == 1
        assert JobSpec.model_validate(state["spec"]) == spec
        model = build_model(spec.model.layers)
        model.load_state_dict(state["model"])
        assert state["metrics"]["test_accuracy"] == reporter.rows[-1].test_accuracy

    def test_write_replaces_an_earlier_file_and_leaves_no_partial(self, tmp_path: Path):
        checkpointing = Checkpointing(tmp_path, "job-1")
        checkpointing.write(3, {"weights": torch.zeros(2)}, test_accuracy=0.5)
        record = checkpointing.write(3, {"weights": torch.ones(4)}, test_accuracy=0.75)
        assert [path.name for path in (tmp_path / "job-1").iterdir()] == ["epoch-003.pt"]
        assert record.name == "epoch-003.pt" and record.test_accuracy == 0.75
        loaded = torch.load(tmp_path / record.path, weights_only=True)
        assert torch.equal(loaded["weights"], torch.ones(4))


def image_batch() -> torch.Tensor:
    """Four uint8 images spanning the whole range, 0 and 255 included."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 28, 28), generator=generator, dtype=torch.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images


class TestInputTransform:
    def test_adds_a_channel_and_gives_float32(self):
        batch = InputTransform(normalize=True)(image_batch())
        assert batch.shape == (4, 1, 28, 28)
        assert batch.dtype == torch.float32

    def test_leaves_the_stored_images_unchanged(self):
        images = image_batch()
        InputTransform(normalize=True)(images)
        assert torch.equal(images, image_batch())

    def test_without_normalize_scales_to_the_unit_interval(self):
        images = image_batch()
        batch = InputTransform(normalize=False)(images)
        scaled = images.double() / 255
        assert (float(batch.min()), float(batch.max())) == (0.0, 1.0)
        assert float(batch.mean()) == pytest.approx(float(scaled.mean()), rel=1e-5)
        assert float(batch.std()) == pytest.approx(float(scaled.std()), rel=1e-5)

    def test_normalize_standardises_with_the_mnist_statistics(self):
        images = image_batch()
        batch = InputTransform(normalize=True)(images)
        scaled = images.double() / 255
        expected_mean = (float(scaled.mean()) - MNIST_MEAN) / MNIST_STD
        assert float(batch.mean()) == pytest.approx(expected_mean, rel=1e-5)
        assert float(batch.std()) == pytest.approx(float(scaled.std()) / MNIST_STD, rel=1e-5)
        assert float(batch.min()) == pytest.approx(-MNIST_MEAN / MNIST_STD, rel=1e-6)
        assert float(batch.max()) == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, rel=1e-6)

    def test_normalize_maps_pixels_at_the_mnist_mean_to_zero(self):
        at_mean = torch.full((1, 28, 28), round(MNIST_MEAN * 255), dtype=torch.uint8)
        batch = InputTransform(normalize=True)(at_mean)
        assert float(batch.abs().max()) < 0.01


def block_types(model: nn.Sequential, index: int) -> list[type[nn.Module]]:
    return [type(module) for module in model[index]]


def built(*layers: dict[str, Any], dropout: float = 0.0) -> nn.Sequential:
    spec = JobSpec.model_validate({"model": {"layers": list(layers), "dropout": dropout}})
    return build_model(spec.model.layers, spec.model.dropout)


GAP_HEAD = ({"type": "gap"}, {"type": "linear", "out_features": 10})


class TestBuildModel:
    def test_one_block_per_spec_layer(self):
        assert len(built(*small_layers())) == len(small_layers())

    def test_batch_norm_follows_its_conv_which_loses_its_bias(self):
        model = built(conv(8, batch_norm=True), conv(8), *GAP_HEAD)
        assert block_types(model, 0) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        assert model[0][0].bias is None
        assert model[0][1].num_features == 8
        assert block_types(model, 1) == [nn.Conv2d, nn.ReLU]
        assert model[1][0].bias is not None

    def test_a_convs_own_dropout_comes_after_its_activation(self):
        model = built(conv(8, batch_norm=True, dropout=0.2, activation="gelu"), *GAP_HEAD)
        assert block_types(model, 0) == [nn.Conv2d, nn.BatchNorm2d, nn.GELU, nn.Dropout]
        assert model[0][3].p == 0.2

    def test_model_dropout_applies_to_convs_without_their_own(self):
        model = built(conv(8), conv(8, dropout=0.3), conv(8, dropout=0.0), *GAP_HEAD, dropout=0.1)
        assert [module.p for module in model[0] if isinstance(module, nn.Dropout)] == [0.1]
        assert [module.p for module in model[1] if isinstance(module, nn.Dropout)] == [0.3]
        assert nn.Dropout not in block_types(model, 2)
        # Not to the head: a linear layer has a dropout of its own.
        assert nn.Dropout not in block_types(model, 4)

    def test_dropout_layers_and_linear_dropout(self):
        model = built(
            conv(8),
            {"type": "flatten"},
            {"type": "dropout", "p": 0.4},
            {"type": "linear", "out_features": 10, "dropout": 0.25},
        )
        assert block_types(model, 2) == [nn.Dropout]
        assert model[2][0].p == 0.4
        assert block_types(model, 3) == [nn.Linear, nn.Dropout]
        assert model[3][1].p == 0.25

    def test_a_linear_layer_on_a_feature_map_flattens_it(self):
        model = built(conv(4, kernel_size=5, stride=4), {"type": "linear", "out_features": 10})
        assert block_types(model, 1) == [nn.Flatten, nn.Linear]
        assert model[1][1].in_features == 4 * 6 * 6

    def test_no_activation_adds_no_module(self):
        model = built(conv(8, activation="none"), *GAP_HEAD)
        assert block_types(model, 0) == [nn.Conv2d]
        assert block_types(model, 1) == [nn.AdaptiveAvgPool2d, nn.Flatten]


TRAIN_IMAGES = 100  # four batches of 32 per epoch: three full and one of four


def schedule_job(schedule: dict[str, Any], epochs: int = 4, **fields: Any) -> JobSpec:
    body = {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "schedule": schedule,
        "epochs": epochs,
        "batch_size": 32,
        **fields,
    }
    return JobSpec.model_validate(body)


def one_parameter_optimizer(lr: float) -> SGD:
    return SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def lr_at_each_step(spec: JobSpec) -> list[list[float]]:
    """The lr of every optimizer step, epoch by epoch, with the controller driven as the loop
    drives it."""
    optimizer = one_parameter_optimizer(spec.optimizer.lr)
    controller = LearningRateController(optimizer, spec, TRAIN_IMAGES)
    epochs = []
    for epoch in range(spec.epochs):
        lrs = []
        for _ in range(batches_per_epoch(TRAIN_IMAGES, spec.batch_size_for_epoch(epoch))):
            lrs.append(controller.lr)
            optimizer.step()
            controller.after_batch()
        controller.after_epoch(epoch, monitored_loss=1.0)
        epochs.append(lrs)
    return epochs


def torch_lr_at_each_step(
    spec: JobSpec, make: Callable[[Optimizer], Any], per_batch: bool
) -> list[list[float]]:
    """The same, with torch's own scheduler stepping a separate optimizer."""
    optimizer = one_parameter_optimizer(spec.optimizer.lr)
    scheduler = make(optimizer)
    epochs = []
    for epoch in range(spec.epochs):
        lrs = []
        for _ in range(batches_per_epoch(TRAIN_IMAGES, spec.batch_size_for_epoch(epoch))):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_batch:
                scheduler.step()
        if not per_batch:
            scheduler.step()
        epochs.append(lrs)
    return epochs


def flat(epochs: list[list[float]]) -> list[float]:
    return [lr for epoch in epochs for lr in epoch]


class TestLearningRateController:
    def test_constant_never_moves(self):
        assert flat(lr_at_each_step(schedule_job({"name": "constant"}))) == [0.1] * 16

    @pytest.mark.parametrize(
        ("schedule", "make"),
        [
            (
                {"name": "step", "step_size": 2, "gamma": 0.5},
                lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
            ),
            (
                {"name": "step", "step_size": 1, "gamma": 0.1},
                lambda opt: lr_scheduler.StepLR(opt, step_size=1, gamma=0.1),
            ),
            (
                {"name": "multistep", "milestones": [1, 3], "gamma": 0.5},
                lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.5),
            ),
            (
                {"name": "exponential", "gamma": 0.8},
                lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.8),
            ),
            (
                {"name": "cosine", "eta_min": 0.001},
                lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.001),
            ),
        ],
        ids=["step-2", "step-1", "multistep", "exponential", "cosine"],
    )
    def test_epochwise_schedules_match_torch(self, schedule, make):
        spec = schedule_job(schedule)
        expected = torch_lr_at_each_step(spec, make, per_batch=False)
        assert flat(lr_at_each_step(spec)) == pytest.approx(flat(expected))

    def test_step_keeps_the_lr_within_an_epoch(self):
        epochs = lr_at_each_step(schedule_job({"name": "step", "step_size": 1, "gamma": 0.5}))
        assert [set(epoch) for epoch in epochs] == [{0.1}, {0.05}, {0.025}, {0.0125}]

    @pytest.mark.parametrize(
        "batch_size_schedule",
        [None, [{"epoch": 0, "batch_size": 50}, {"epoch": 2, "batch_size": 20}]],
        ids=["fixed-batches", "batch-size-schedule"],
    )
    def test_onecycle_matches_torch_step_by_step(self, batch_size_schedule):
        spec = schedule_job(
            {"name": "onecycle", "max_lr": 0.2, "pct_start": 0.25},
            batch_size_schedule=batch_size_schedule,
        )
        total = sum(
            batches_per_epoch(TRAIN_IMAGES, spec.batch_size_for_epoch(epoch))
            for epoch in range(spec.epochs)
        )
        expected = torch_lr_at_each_step(
            spec,
            lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=total, pct_start=0.25),
            per_batch=True,
        )
        assert flat(lr_at_each_step(spec)) == pytest.approx(flat(expected))

    def test_onecycle_without_max_lr_peaks_at_the_optimizer_lr(self):
        lrs = flat(lr_at_each_step(schedule_job({"name": "onecycle"})))
        # The peak falls between two of the 16 steps, so it is approached, never passed.
        assert 0.099 < max(lrs) <= 0.1
        assert lrs[0] == pytest.approx(0.1 / 25)

    def test_warmup_ramps_from_a_tenth_of_the_lr(self):
        epochs = lr_at_each_step(schedule_job({"name": "constant", "warmup_epochs": 1}))
        steps = len(epochs[0])
        assert epochs[0] == pytest.approx([0.1 * (0.1 + 0.9 * i / steps) for i in range(steps)])
        assert flat(epochs[1:]) == pytest.approx([0.1] * 12)

    def test_warmup_hands_over_to_the_schedule_at_the_full_lr(self):
        schedule = {"name": "step", "step_size": 1, "gamma": 0.5, "warmup_epochs": 1}
        epochs = lr_at_each_step(schedule_job(schedule))
        assert epochs[0][0] == pytest.approx(0.01)
        assert [epoch[0] for epoch in epochs[1:]] == pytest.approx([0.1, 0.05, 0.025])


class TestMoreSchedulesAgainstTorch:
    @pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
    def test_cyclic_steps_per_batch_like_torch(self, mode):
        schedule = {
            "name": "cyclic",
            "base_lr": 0.01,
            "max_lr": 0.1,
            "step_size_up": 3,
            "mode": mode,
            "gamma": 0.9,
        }
        spec = schedule_job(schedule)
        expected = torch_lr_at_each_step(
            spec,
            lambda opt: lr_scheduler.CyclicLR(
                opt,
                base_lr=0.01,
                max_lr=0.1,
                step_size_up=3,
                mode=mode,
                gamma=0.9,
                cycle_momentum=False,
            ),
            per_batch=True,
        )
        assert flat(lr_at_each_step(spec)) == pytest.approx(flat(expected))

    def test_cyclic_cycle_epochs_sets_the_half_cycle_in_batches(self):
        spec = schedule_job({"name": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "cycle_epochs": 2})
        lrs = flat(lr_at_each_step(spec))
        # Two epochs of four batches make a cycle: the peak is four steps in.
        assert lrs.index(max(lrs)) == 4

    def test_plateau_cuts_the_lr_like_torch(self):
        spec = schedule_job({"name": "plateau", "factor": 0.5, "patience": 1}, epochs=6)
        optimizer = one_parameter_optimizer(0.1)
        reference = lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
        expected = []
        for _ in range(6):
            expected.append(optimizer.param_groups[0]["lr"])
            reference.step(1.0)
        # lr_at_each_step reports a flat test loss of 1.0 after every epoch.
        assert [epoch[0] for epoch in lr_at_each_step(spec)] == pytest.approx(expected)


class TestOptimizersAndLoss:
    @pytest.mark.parametrize(
        ("body", "kind", "expected"),
        [
            (
                {"name": "sgd", "lr": 0.2, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-4},
                torch.optim.SGD,
                {"lr": 0.2, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-4},
            ),
            (
                {"name": "adam", "lr": 0.003, "betas": [0.8, 0.9]},
                torch.optim.Adam,
                {"lr": 0.003, "betas": (0.8, 0.9)},
            ),
            ({"name": "adamw", "weight_decay": 0.05}, torch.optim.AdamW, {"weight_decay": 0.05}),
            (
                {"name": "rmsprop", "alpha": 0.9, "momentum": 0.5},
                torch.optim.RMSprop,
                {"alpha": 0.9, "momentum": 0.5},
            ),
        ],
        ids=["sgd", "adam", "adamw", "rmsprop"],
    )
    def test_each_optimizer_gets_its_settings(self, body, kind, expected):
        spec = JobSpec.model_validate({"optimizer": body})
        optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], spec.optimizer)
        assert type(optimizer) is kind
        assert {key: optimizer.defaults[key] for key in expected} == expected

    def test_an_unknown_optimizer_raises_instead_of_training_with_sgd(self):
        # Shaped like SGD's spec, so a fall-through to SGD would build one without a word.
        @dataclass
        class LionSpec:
            name: str = "lion"
            lr: float = 0.01
            momentum: float = 0.0
            nesterov: bool = False
            weight_decay: float = 0.0

        with pytest.raises(TypeError, match="lion"):
            build_optimizer([nn.Parameter(torch.zeros(1))], LionSpec())  # type: ignore[arg-type]

    def test_label_smoothing_raises_the_loss_of_confident_answers(self, mnist):
        plain = train(small_job(epochs=1), mnist, RecordingReporter(), hardware=CPU_FP32)
        smoothed = train(
            small_job(epochs=1, label_smoothing=0.2), mnist, RecordingReporter(), hardware=CPU_FP32
        )
        assert smoothed.final.train_loss > plain.final.train_loss


class TestBuildForTraining:
    def test_a_spec_without_layers_raises_instead_of_building_an_empty_model(self):
        spec = small_job()
        bare = spec.model_copy(update={"model": spec.model.model_copy(update={"layers": None})})
        with pytest.raises(ValueError, match="no layers"):
            build_for_training(bare, CPU)


class TestHardwareIsDecidedOnce:
    def test_training_never_reads_the_cpu_flags_itself(self, mnist, monkeypatch):
        """The job's precision comes in with its hardware: nothing in the loop, per batch or
        per evaluation, opens /proc/cpuinfo."""
        opened = cpuinfo_opens(monkeypatch)
        reporter = RecordingReporter()
        train(small_job(epochs=2), mnist, reporter, hardware=CPU_FP32)
        assert [row.epoch for row in reporter.rows] == [0, 1]
        assert opened == []
