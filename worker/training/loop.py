"""The training loop: a pure function of a spec, the data and a reporter.

It knows nothing of Celery or HTTP. After each epoch it writes a checkpoint
and hands the epoch's metrics and checkpoint to the reporter; between batches
it asks the reporter whether to stop, and now and then tells it how far the
epoch has come. Given a checkpoint's state it resumes after that epoch exactly
as if it had never stopped: the model, optimizer, schedule and random number
generators all continue from where they were.
"""

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from shared.messages import BatchProgress, CheckpointRecord, DataSplit, EpochMetrics
from shared.spec import JobSpec
from worker.training.augment import BatchAugmenter
from worker.training.checkpoints import Checkpointing
from worker.training.data import InputTransform, MnistTensors, Split
from worker.training.determinism import deterministic_algorithms
from worker.training.device import Hardware
from worker.training.graphs import CapturePlan, GraphedStep, build_step, plan_capture
from worker.training.model import build_for_training
from worker.training.optimizers import build_optimizer
from worker.training.progress import EVALUATION_SHARE, ProgressMeter, images_per_epoch
from worker.training.schedules import LearningRateController, batches_per_epoch
from worker.training.splits import split_training_images
from worker.training.steps import EagerStep, EpochDraws, to_device

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 2000


class Reporter(Protocol):
    def should_stop(self) -> bool: ...

    def handback_deadline(self) -> float | None:
        """A time.monotonic() by which to hand the job back (the worker is shutting down),
        or None."""
        ...

    def epoch_finished(
        self, metrics: EpochMetrics, checkpoint: CheckpointRecord | None
    ) -> None: ...

    def batch_progress(self, progress: BatchProgress) -> None:
        """Where the epoch under way is: called when it begins, at most every
        PROGRESS_INTERVAL seconds while it trains, and after its last batch."""
        ...


class TrainingDiverged(FloatingPointError):
    """The loss stopped being a finite number: the learning rate is usually too high."""


class TrainingStopped(Exception):
    """The reporter asked the loop to stop (the job was cancelled or its lease lost)."""


class TrainingHandedBack(Exception):
    """The worker is shutting down: training stopped after its last checkpoint, so that
    another attempt resumes from there."""

    def __init__(self, epochs_completed: int) -> None:
        super().__init__(f"handed back after {epochs_completed} epochs")
        self.epochs_completed = epochs_completed


@dataclass
class EpochTimes:
    """Where an epoch's seconds went, each part ending where the host waits for the device
    anyway (so that timing it costs no synchronisation)."""

    # The batches: their steps, augmentation, stop checks and progress; capture included.
    train: float = 0.0
    # Capturing CUDA graphs, part of `train`.
    capture: float = 0.0
    test: float = 0.0
    validation: float = 0.0
    checkpoint: float = 0.0
    # Handing the epoch to the reporter.
    report: float = 0.0

    def describe(self) -> str:
        parts = [f"train {self.train:.2f}"]
        if self.capture:
            parts.append(f"of which capture {self.capture:.2f}")
        parts.append(f"test {self.test:.2f}")
        if self.validation:
            parts.append(f"validation {self.validation:.2f}")
        parts += [f"checkpoint {self.checkpoint:.3f}", f"report {self.report:.3f}"]
        return ", ".join(parts)


@dataclass
class TrainingResult:
    epochs_completed: int
    final: EpochMetrics | None
    # What it trained and validated on.
    split: DataSplit | None = None
    # Building the run (the split, the model, its optimizer and schedule, any resume).
    setup_seconds: float = 0.0
    # One per epoch this run trained.
    epoch_times: list[EpochTimes] = field(default_factory=list)
    capture: CapturePlan | None = None


def evaluate(
    model: nn.Module, split: Split, transform: InputTransform, hardware: Hardware
) -> tuple[float, float]:
    """Mean loss and accuracy over a split, in large batches with autograd off, at the
    job's precision; summed on the device and read back once."""
    model.eval()
    device = split.labels.device
    # Each batch's sum added in double precision, as a Python float would be.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.inference_mode(), hardware.autocast():
        for start in range(0, len(split), EVAL_BATCH_SIZE):
            images = transform(split.images[start : start + EVAL_BATCH_SIZE])
            labels = split.labels[start : start + EVAL_BATCH_SIZE]
            logits = model(images).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
    return float(loss_sum) / len(split), int(correct) / len(split)


@dataclass
class Setup:
    """What a run built from a spec starts with: seeded, on the device."""

    shuffler: torch.Generator
    train_split: Split
    # The training images held out (data.validation), or None when there are none.
    validation_split: Split | None
    test_split: Split
    split: DataSplit
    transform: InputTransform
    model: nn.Sequential
    optimizer: torch.optim.Optimizer
    loss_fn: nn.CrossEntropyLoss

    @classmethod
    def from_spec(cls, spec: JobSpec, data: MnistTensors, device: torch.device) -> "Setup":
        torch.manual_seed(spec.seed)
        model = build_for_training(spec, device)
        # Drawn by its own generator: the job's seeded streams are the same with or without.
        split = split_training_images(data.train.labels, spec.data)
        return cls(
            shuffler=torch.Generator(device="cpu").manual_seed(spec.seed),
            train_split=data.train.take(split.train),
            validation_split=data.train.take(split.validation) if len(split.validation) else None,
            split=split.record(),
            test_split=data.test.first(spec.data.test_subset),
            transform=InputTransform(spec.data.normalize, BatchAugmenter(spec.data.augment)),
            model=model,
            optimizer=build_optimizer(model.parameters(), spec.optimizer),
            loss_fn=nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing),
        )


def capture_rng(shuffler: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffler": shuffler.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(shuffler: torch.Generator, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    shuffler.set_state(state["shuffler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _epoch_fits(deadline: float, started: float, batches_done: int, batches: int) -> bool:
    """Whether the rest of the epoch, and its evaluation, likely end before `deadline`."""
    if batches_done == 0:
        return False
    per_batch = (time.perf_counter() - started) / batches_done
    left = per_batch * (batches - batches_done) * (1 + EVALUATION_SHARE)
    return time.monotonic() + left < deadline


def train(
    spec: JobSpec,
    data: MnistTensors,
    reporter: Reporter,
    checkpointing: Checkpointing | None = None,
    *,
    hardware: Hardware,
    resume: dict[str, Any] | None = None,
) -> TrainingResult:
    """Trains `spec` from scratch, or from the checkpoint state `resume` onwards, on the
    job's hardware (chosen once, when the job started), with deterministic algorithms only
    if the spec asks for them."""
    with deterministic_algorithms(spec.deterministic, hardware.device):
        return _train(spec, data, reporter, checkpointing, hardware, resume)


def _train(
    spec: JobSpec,
    data: MnistTensors,
    reporter: Reporter,
    checkpointing: Checkpointing | None,
    hardware: Hardware,
    resume: dict[str, Any] | None,
) -> TrainingResult:
    device = hardware.device
    set_up_at = time.perf_counter()
    setup = Setup.from_spec(spec, data, device)
    shuffler, train_split, test_split = setup.shuffler, setup.train_split, setup.test_split
    validation_split = setup.validation_split
    transform, model, optimizer = setup.transform, setup.model, setup.optimizer
    lr_control = LearningRateController(optimizer, spec, len(train_split))
    progress = ProgressMeter(
        reporter.batch_progress,
        [
            images_per_epoch(len(train_split), spec.batch_size_for_epoch(epoch))
            for epoch in range(spec.epochs)
        ],
    )

    first_epoch = 0
    final: EpochMetrics | None = None
    if resume is not None:
        model.load_state_dict(resume["model"])
        # Schedules first: building one may move the lr, which the optimizer's state puts back.
        lr_control.load_state_dict(resume["lr_control"])
        optimizer.load_state_dict(resume["optimizer"])
        restore_rng(shuffler, resume["rng"])
        first_epoch = int(resume["epoch"]) + 1
        final = EpochMetrics.model_validate(resume["metrics"])
        log.info("resuming after epoch %d", first_epoch - 1)

    plan = plan_capture(
        device_type=device.type,
        graphs_available=hardware.graphs,
        deterministic=spec.deterministic,
        batch_sizes=[spec.batch_size_for_epoch(e) for e in range(first_epoch, spec.epochs)],
        train_images=len(train_split),
    )
    log.info("training steps: %s", plan.describe())
    step = build_step(
        EagerStep(model, setup.loss_fn, optimizer, transform, train_split, hardware), plan
    )
    draws = EpochDraws(transform, device)
    result = TrainingResult(
        epochs_completed=spec.epochs,
        final=final,
        split=setup.split,
        setup_seconds=time.perf_counter() - set_up_at,
        capture=plan,
    )

    for epoch in range(first_epoch, spec.epochs):
        times = EpochTimes()
        captured_before = step.capture_seconds if isinstance(step, GraphedStep) else 0.0
        batch_size = spec.batch_size_for_epoch(epoch)
        epoch_lr = lr_control.lr
        started = time.perf_counter()
        model.train()
        order = to_device(torch.randperm(len(train_split), generator=shuffler), device)
        seen = 0
        batches = batches_per_epoch(len(train_split), batch_size)
        step.start_epoch()
        draws.start_epoch(images_per_epoch(len(train_split), batch_size))
        progress.start_epoch(epoch, batches)
        for index in range(batches):
            if reporter.should_stop():
                raise TrainingStopped
            handback_by = reporter.handback_deadline()
            if handback_by is not None and not _epoch_fits(handback_by, started, index, batches):
                raise TrainingHandedBack(epoch)
            batch = order[index * batch_size : (index + 1) * batch_size]
            step(batch, draws.take(len(batch)))
            lr_control.after_batch()
            seen += len(batch)
            progress.batch_done(index + 1, seen)
        # The first read of the device's results this epoch: it waits for the last batch.
        loss_total, correct = step.sums()
        train_seconds = time.perf_counter() - started
        times.train = train_seconds
        if isinstance(step, GraphedStep):
            times.capture = step.capture_seconds - captured_before
        train_loss = loss_total / seen
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"the training loss became {train_loss} in epoch {epoch}")

        test_loss, test_accuracy = evaluate(model, test_split, transform, hardware)
        times.test = time.perf_counter() - started - train_seconds
        if not math.isfinite(test_loss):
            raise TrainingDiverged(f"the test loss became {test_loss} after epoch {epoch}")
        val_loss = val_accuracy = None
        if validation_split is not None:
            validating = time.perf_counter()
            val_loss, val_accuracy = evaluate(model, validation_split, transform, hardware)
            times.validation = time.perf_counter() - validating
            if not math.isfinite(val_loss):
                raise TrainingDiverged(f"the validation loss became {val_loss} after epoch {epoch}")
        # A plateau schedule watches the validation loss when the job holds images out for
        # it, so that the test set does not steer training; without, the test loss.
        lr_control.after_epoch(epoch, test_loss if val_loss is None else val_loss)
        final = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=correct / seen,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=epoch_lr,
            batch_size=batch_size,
            epoch_seconds=time.perf_counter() - started,
            images_per_second=seen / train_seconds,
        )
        checkpoint = None
        if checkpointing is not None:
            writing = time.perf_counter()
            # Everything the next epoch depends on; the batch size follows from the epoch.
            checkpoint = checkpointing.write(
                epoch,
                {
                    "epoch": epoch,
                    "batch_size": batch_size,
                    "spec": spec.model_dump(mode="json"),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_control": lr_control.state_dict(),
                    "rng": capture_rng(shuffler),
                    "metrics": final.model_dump(),
                },
                test_accuracy,
                val_accuracy,
            )
            times.checkpoint = time.perf_counter() - writing
        reporting = time.perf_counter()
        reporter.epoch_finished(final, checkpoint)
        times.report = time.perf_counter() - reporting
        result.final = final
        result.epoch_times.append(times)
        log.info(
            "epoch %d: test accuracy %.4f, %.1f s (%s)",
            epoch,
            test_accuracy,
            final.epoch_seconds,
            times.describe(),
        )
        if reporter.handback_deadline() is not None and epoch + 1 < spec.epochs:
            raise TrainingHandedBack(epoch + 1)
    return result
