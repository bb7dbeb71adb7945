"""The LR range test: one pass of exponentially growing learning rates, recording the loss.

Picking the learning rate is the first thing to tune. The test trains for a few hundred
batches from a tiny lr to a large one; the loss first falls, then blows up. The lr where
the smoothed loss falls fastest is the suggestion.
"""

import math

import torch

from shared.messages import LrRangePoint, LrRangeResult
from shared.spec import JobSpec
from worker.training.data import MnistTensors
from worker.training.determinism import deterministic_algorithms
from worker.training.device import Hardware
from worker.training.loop import Reporter, Setup, TrainingHandedBack, TrainingStopped
from worker.training.progress import ProgressMeter


def suggest(points: list[LrRangePoint]) -> tuple[float | None, float | None]:
    """(steepest-descent lr, lowest-loss lr) of the smoothed curve."""
    if len(points) < 3:
        return None, None
    lowest = min(points, key=lambda point: point.smoothed_loss)
    # The slope of the smoothed loss against log(lr), up to the lowest point.
    end = points.index(lowest)
    slopes = [
        (
            (after.smoothed_loss - before.smoothed_loss)
            / (math.log(after.lr) - math.log(before.lr)),
            after.lr,
        )
        for before, after in zip(points[:end], points[1 : end + 1], strict=True)
    ]
    steepest = min(slopes)[1] if slopes else None
    return steepest, lowest.lr


def lr_range_test(
    spec: JobSpec, data: MnistTensors, reporter: Reporter, hardware: Hardware
) -> LrRangeResult:
    """Runs the sweep on the job's hardware, at the precision training would use: a curve
    measured in fp32 could suggest an lr that bf16 training cannot take. Deterministically if
    the spec asks, as training would."""
    with deterministic_algorithms(spec.deterministic, hardware.device):
        return _sweep(spec, data, reporter, hardware)


def _sweep(
    spec: JobSpec, data: MnistTensors, reporter: Reporter, hardware: Hardware
) -> LrRangeResult:
    settings = spec.lr_range_test
    device = hardware.device
    setup = Setup.from_spec(spec, data, device)
    shuffler, train_split, transform = setup.shuffler, setup.train_split, setup.transform
    model, optimizer, loss_fn = setup.model, setup.optimizer, setup.loss_fn
    growth = (settings.end_lr / settings.start_lr) ** (1 / (settings.steps - 1))
    batch_size = spec.batch_size_for_epoch(0)
    # Every batch is full: the order is reshuffled before it would run short.
    batch_images = min(batch_size, len(train_split))
    # One "epoch" of `steps` batches, with no evaluation after it.
    progress = ProgressMeter(
        reporter.batch_progress,
        [settings.steps * batch_images],
        phase="lr_range_test",
        evaluation_share=0.0,
    )

    points: list[LrRangePoint] = []
    smoothed, best, diverged_at = 0.0, math.inf, None
    order = torch.randperm(len(train_split), generator=shuffler).to(device)
    position = 0
    model.train()
    progress.start_epoch(0, settings.steps)
    for step in range(settings.steps):
        if reporter.should_stop():
            raise TrainingStopped
        if reporter.handback_deadline() is not None:
            raise TrainingHandedBack(0)  # a few hundred batches: the next attempt starts over
        if position + batch_size > len(order):
            order = torch.randperm(len(train_split), generator=shuffler).to(device)
            position = 0
        batch = order[position : position + batch_size]
        position += batch_size
        lr = settings.start_lr * growth**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = transform(train_split.images[batch], train=True)
        with hardware.autocast():
            loss = loss_fn(model(images).float(), train_split.labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        # Bias-corrected exponential moving average, as in Adam.
        smoothed = settings.smoothing * smoothed + (1 - settings.smoothing) * value
        corrected = smoothed / (1 - settings.smoothing ** (step + 1))
        if not math.isfinite(value) or corrected > settings.divergence_factor * best:
            diverged_at = lr
            break
        best = min(best, corrected)
        points.append(LrRangePoint(lr=lr, loss=value, smoothed_loss=corrected))
        progress.batch_done(step + 1, (step + 1) * batch_images)
    steepest, lowest = suggest(points)
    return LrRangeResult(
        points=points, suggested_lr=steepest, min_loss_lr=lowest, diverged_at_lr=diverged_at
    )
