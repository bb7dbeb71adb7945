"""Progress within an epoch, measured cheaply enough to be asked after every batch.

A watcher wants to see an epoch advance, but the training loop must not pay for it: a
report is built only every `PROGRESS_INTERVAL` seconds (and when an epoch begins and
ends), and nothing here reads a tensor, so the host never waits for the device.
"""

import time
from collections.abc import Callable, Sequence
from typing import Literal

from shared.messages import BatchProgress
from worker.training.schedules import batches_per_epoch

# How often a running epoch reports at most: a heartbeat carries only the newest report.
PROGRESS_INTERVAL = 0.5
# Evaluation costs roughly a tenth of an epoch's training on MNIST.
EVALUATION_SHARE = 0.1

Phase = Literal["train", "lr_range_test"]


def images_per_epoch(images: int, batch_size: int) -> int:
    """How many images an epoch trains on: all but a final batch of one, which is dropped."""
    return min(images, batches_per_epoch(images, batch_size) * batch_size)


class ProgressMeter:
    """Tells `report` how far the current epoch is, how fast it goes and how long the
    whole run has left.

    `images_by_epoch` holds how many images each epoch of the run trains on, the first
    included even when a resumed run skips it; `evaluation_share` is what each epoch's
    evaluation costs as a fraction of that epoch's training.
    """

    def __init__(
        self,
        report: Callable[[BatchProgress], None],
        images_by_epoch: Sequence[int],
        *,
        phase: Phase = "train",
        evaluation_share: float = EVALUATION_SHARE,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._report = report
        self._phase: Phase = phase
        self._interval = interval
        self._clock = clock
        # What each epoch costs, in images of training with its evaluation at its share, and
        # what all the epochs after it cost: summed once here rather than on every report.
        self._epoch_cost = [images * (1 + evaluation_share) for images in images_by_epoch]
        self._cost_after = [0.0] * len(images_by_epoch)
        for epoch in range(len(images_by_epoch) - 2, -1, -1):
            self._cost_after[epoch] = self._cost_after[epoch + 1] + self._epoch_cost[epoch + 1]
        self._epoch = 0
        self._batches = 1
        self._started = 0.0
        self._next_report = 0.0
        # Images per second of the last epoch that trained any: the pace an epoch's ETA
        # starts from before it has measured its own.
        self._pace: float | None = None

    def start_epoch(self, epoch: int, batches: int) -> None:
        """Reports at once that `epoch` begins, so a watcher sees it before its first batch
        (which may be slow to warm up)."""
        self._epoch = epoch
        self._batches = batches
        self._started = self._clock()
        self._send(0, 0, self._started)

    def batch_done(self, batches_completed: int, images_completed: int) -> None:
        """Called after every batch with the epoch's totals so far; reports when the interval
        has passed, and after the epoch's last batch."""
        now = self._clock()
        if now >= self._next_report or batches_completed >= self._batches:
            self._send(batches_completed, images_completed, now)

    def _send(self, batches_completed: int, images_completed: int, now: float) -> None:
        self._next_report = now + self._interval
        elapsed = now - self._started
        images_per_second = images_completed / elapsed if elapsed > 0 else 0.0
        if images_completed > 0 and elapsed > 0:
            self._pace = images_per_second
        self._report(
            BatchProgress(
                phase=self._phase,
                epoch=self._epoch,
                batches_completed=batches_completed,
                batches=self._batches,
                images_per_second=images_per_second,
                eta_seconds=self._eta(images_completed),
            )
        )

    def _eta(self, images_completed: int) -> float | None:
        if self._pace is None:
            return None
        left = self._epoch_cost[self._epoch] - images_completed + self._cost_after[self._epoch]
        return max(0.0, left) / self._pace
