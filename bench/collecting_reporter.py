"""The trainer's reporter for the benchmarks that call train() themselves: it keeps each
epoch's metrics as a row, never asks the run to stop and never hands it back."""

from collections.abc import Callable
from dataclasses import dataclass, field

from shared.messages import BatchProgress, CheckpointRecord, EpochMetrics


def _say_nothing(_metrics: EpochMetrics) -> None:
    pass


@dataclass
class CollectingReporter:
    # Called with each epoch once its row is kept: a long run can say how it is going.
    on_epoch: Callable[[EpochMetrics], None] = _say_nothing
    rows: list[dict[str, float]] = field(default_factory=list)

    def should_stop(self) -> bool:
        return False

    def handback_deadline(self) -> float | None:
        return None

    def batch_progress(self, progress: BatchProgress) -> None:
        pass

    def epoch_finished(self, metrics: EpochMetrics, checkpoint: CheckpointRecord | None) -> None:
        self.rows.append(metrics.model_dump())
        self.on_epoch(metrics)
