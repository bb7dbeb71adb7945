"""Where a trial's epoch goes, and what the training step costs alone: the parts of
`make bench-train` beyond the three-way comparison.

A trial is a study's job as studies run them: a compact-8k-sized model, batch 256, small
random rotations, images held out for validation, a checkpoint each epoch. The trainer times
each part of its epochs where the host waits for the device anyway (worker.training.loop's
EpochTimes); the reporter's calls are timed by a reporter that wraps the bench's own, and the
augmentation alone by running an epoch's batches through it.
"""

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.collecting_reporter import CollectingReporter
from shared.checks import admit
from shared.messages import BatchProgress, CheckpointRecord, EpochMetrics
from shared.presets import PRESETS
from shared.settings import Settings
from shared.spec import JobSpec
from worker.training.augment import BatchAugmenter
from worker.training.checkpoints import Checkpointing
from worker.training.data import InputTransform, MnistTensors
from worker.training.device import Hardware
from worker.training.loop import EpochTimes, TrainingResult, train
from worker.training.progress import images_per_epoch
from worker.training.schedules import batches_per_epoch
from worker.training.steps import EpochDraws, to_device

TRIAL_BATCH = 256
TRIAL_VALIDATION = 5000
BARE_STEP_SIZES = (128, 256, 512, 2048)


def trial_spec(epochs: int, batch_size: int = TRIAL_BATCH, **data: object) -> JobSpec:
    """compact-8k's recipe (one-cycle SGD, rotations up to 7 degrees) at a study's batch size,
    holding images out for validation."""
    body = PRESETS["compact-8k"].job()
    recipe_data = dict(body.get("data") or {})  # type: ignore[call-overload]
    body = {
        **body,
        "name": "bench-trial",
        "epochs": epochs,
        "batch_size": batch_size,
        "data": {**recipe_data, "validation": TRIAL_VALIDATION, **data},
    }
    return admit(JobSpec.model_validate(body), Settings())[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TimingReporter(CollectingReporter):
    """The bench's reporter, with the seconds the loop spent in its calls within epochs."""

    seconds_in_batches: float = 0.0
    by_epoch: list[float] = field(default_factory=list)

    @contextmanager
    def _timed(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds_in_batches += time.perf_counter() - began

    def should_stop(self) -> bool:
        with self._timed():
            return super().should_stop()

    def handback_deadline(self) -> float | None:
        with self._timed():
            return super().handback_deadline()

    def batch_progress(self, progress: BatchProgress) -> None:
        with self._timed():
            super().batch_progress(progress)

    def epoch_finished(self, metrics: EpochMetrics, checkpoint: CheckpointRecord | None) -> None:
        super().epoch_finished(metrics, checkpoint)
        self.by_epoch.append(self.seconds_in_batches)
        self.seconds_in_batches = 0.0


def augmentation_seconds(spec: JobSpec, data: MnistTensors, hardware: Hardware) -> float:
    """An epoch's augmentation alone: its batches scaled, drawn for and moved, as the trainer
    does them, with nothing else."""
    device = hardware.device
    transform = InputTransform(spec.data.normalize, BatchAugmenter(spec.data.augment))
    images = data.train.images
    count = len(data.train) - spec.data.validation
    batch_size = spec.batch_size
    draws = EpochDraws(transform, device)
    synchronize(device)
    began = time.perf_counter()
    order = to_device(torch.randperm(count), device)
    draws.start_epoch(images_per_epoch(count, batch_size))
    for index in range(batches_per_epoch(count, batch_size)):
        batch = order[index * batch_size : (index + 1) * batch_size]
        transform(images[batch], train=True, draws=draws.take(len(batch)))
    synchronize(device)
    return time.perf_counter() - began


@dataclass
class TrialRun:
    result: TrainingResult
    rows: list[dict[str, float]]
    reporting: list[float]
    wall: float


def run_trial(spec: JobSpec, data: MnistTensors, hardware: Hardware) -> TrialRun:
    reporter = TimingReporter()
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        result = train(
            spec, data, reporter, Checkpointing(Path(scratch), "trial"), hardware=hardware
        )
        wall = time.perf_counter() - began
    return TrialRun(result, reporter.rows, reporter.by_epoch, wall)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def print_parts(name: str, run: TrialRun, augmentation: float) -> None:
    """Each part's median over the epochs after the first (all of them if there is one), and
    its share of the median epoch."""
    times: list[EpochTimes] = run.result.epoch_times
    later = slice(1, None) if len(times) > 1 else slice(None)
    epoch = median([row["epoch_seconds"] for row in run.rows][later])
    parts = {
        "train steps": median([t.train for t in times[later]]),
        "evaluation, test": median([t.test for t in times[later]]),
        "evaluation, validation": median([t.validation for t in times[later]]),
        "progress and reporting": median(
            [t.report + inside for t, inside in zip(times, run.reporting, strict=True)][later]
        ),
        "checkpoint": median([t.checkpoint for t in times[later]]),
    }
    # The epoch's seconds as the job reports them end before its checkpoint and report.
    whole = epoch + parts["checkpoint"] + median([t.report for t in times[later]])
    which = "median of epochs 2 on" if len(times) > 1 else "its one epoch"
    print(f"{name}: {whole:.2f} s per epoch ({which}), parts:", flush=True)
    for part, seconds in parts.items():
        print(f"  {part:<24} {seconds:>7.3f} s  {seconds / whole:>6.1%}")
    print(
        f"  {'of which augmentation':<24} {augmentation:>7.3f} s  {augmentation / whole:>6.1%}"
        "  (an epoch's augmentation alone, measured apart)"
    )
    first = times[0]
    print(
        f"  first epoch {run.rows[0]['epoch_seconds']:.2f} s (train {first.train:.2f}, capture "
        f"{first.capture:.2f}); setup {run.result.setup_seconds:.2f} s; whole run {run.wall:.1f} s"
        f"; test accuracy {run.rows[-1]['test_accuracy']:.4f}",
        flush=True,
    )


def trial(data: MnistTensors, hardware: Hardware, epochs: int) -> dict[str, float]:
    """The trial's epoch parts on `hardware`, and on a GPU with its steps eager too."""
    spec = trial_spec(epochs)
    augmentation = augmentation_seconds(spec, data, hardware)
    print(
        f"trial: compact-8k, batch {spec.batch_size}, rotation "
        f"{spec.data.augment.rotation_degrees} degrees, {spec.data.validation} images held out "
        f"for validation, a checkpoint each epoch, {epochs} epochs on {hardware}",
        flush=True,
    )
    run = run_trial(spec, data, hardware)
    plan = run.result.capture
    print(f"  steps: {plan.describe() if plan else 'unknown'}")
    print_parts("trial", run, augmentation)
    figures = {"trial_train": median([t.train for t in run.result.epoch_times[1:]])}
    if hardware.graphs:
        eager_hardware = Hardware(hardware.device, hardware.bf16, graphs=False)
        eager = run_trial(spec, data, eager_hardware)
        print_parts("trial, eager steps", eager, augmentation)
        eager_train = median([t.train for t in eager.result.epoch_times[1:]])
        print(
            f"  train steps eager / graphed = {eager_train / figures['trial_train']:.2f}; "
            f"|test accuracy difference| = "
            f"{abs(eager.rows[-1]['test_accuracy'] - run.rows[-1]['test_accuracy']) * 100:.2f} "
            "points",
            flush=True,
        )
    return figures


def bare_steps(data: MnistTensors, hardware: Hardware) -> None:
    """compact-8k's training steps alone (no augmentation, no validation), by batch size:
    the second epoch's train phase, eager and, where it applies, in graphs."""
    print("bare step, compact-8k, no augmentation: s per epoch of training steps", flush=True)
    kinds = [("eager", Hardware(hardware.device, hardware.bf16, graphs=False))]
    if hardware.graphs:
        kinds.append(("graphed", hardware))
    for batch_size in BARE_STEP_SIZES:
        spec = trial_spec(2, batch_size, augment={}, validation=0, test_subset=1000)
        seconds = {}
        for kind, used in kinds:
            result = train(spec, data, CollectingReporter(), hardware=used)
            seconds[kind] = result.epoch_times[-1].train
        said = "  ".join(f"{kind} {value:.3f}" for kind, value in seconds.items())
        ratio = (
            f"  eager/graphed {seconds['eager'] / seconds['graphed']:.2f}"
            if "graphed" in seconds
            else ""
        )
        print(f"  batch {batch_size:>5}: {said}{ratio}", flush=True)
