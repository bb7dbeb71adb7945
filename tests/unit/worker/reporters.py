"""Reporters for the training loop in tests: one that records what the loop reports, and
one that dies as a SIGKILLed worker would."""

from dataclasses import dataclass, field

from shared.messages import BatchProgress, CheckpointRecord, EpochMetrics


@dataclass
class RecordingReporter:
    """Records what the loop reports; asks it to stop once `stop_after` batches were asked."""

    stop_after: int | None = None
    stop_questions: int = 0
    rows: list[EpochMetrics] = field(default_factory=list)
    checkpoints: list[CheckpointRecord | None] = field(default_factory=list)
    progress: list[BatchProgress] = field(default_factory=list)

    def should_stop(self) -> bool:
        self.stop_questions += 1
        return self.stop_after is not None and self.stop_questions > self.stop_after

    def handback_deadline(self) -> float | None:
        return None

    def epoch_finished(self, metrics: EpochMetrics, checkpoint: CheckpointRecord | None) -> None:
        self.rows.append(metrics)
        self.checkpoints.append(checkpoint)

    def batch_progress(self, progress: BatchProgress) -> None:
        self.progress.append(progress)


class WorkerKilled(Exception):
    """Stands for a SIGKILL right after an epoch was reported."""


@dataclass
class KilledAfter(RecordingReporter):
    kill_after_epoch: int = 0

    def epoch_finished(self, metrics: EpochMetrics, checkpoint: CheckpointRecord | None) -> None:
        super().epoch_finished(metrics, checkpoint)
        if metrics.epoch == self.kill_after_epoch:
            raise WorkerKilled
