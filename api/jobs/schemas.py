"""Response models: what clients see, never the tables themselves."""

from datetime import datetime

from pydantic import BaseModel, Field

from api.core.models import (
    AttemptOutcome,
    AttemptRow,
    CheckpointRow,
    EpochMetricRow,
    Job,
    JobStatus,
    as_utc,
)
from api.jobs.live_progress import LiveProgress
from shared.messages import EpochMetrics, JobError, JobResult
from shared.spec import JobSpec


class Progress(BaseModel):
    epochs_completed: int
    epochs: int
    batches_completed: int | None = Field(
        default=None, description="Batches done in the epoch under way; null when not running"
    )
    batches: int | None = Field(default=None, description="Batches in the epoch under way")
    images_per_second: float | None = Field(
        default=None, description="Training pace in the epoch under way"
    )
    eta_seconds: float | None = Field(
        default=None, description="Until the whole job ends, at the pace measured so far"
    )

    @classmethod
    def of(cls, job: Job) -> "Progress":
        live = LiveProgress.of(job)
        if live is None:
            return cls(epochs_completed=job.epochs_completed, epochs=job.epochs)
        return cls(
            epochs_completed=job.epochs_completed,
            epochs=job.epochs,
            batches_completed=live.batches_completed,
            batches=live.batches,
            images_per_second=live.images_per_second,
            eta_seconds=live.eta_now(),
        )


class Summary(BaseModel):
    parameters: int
    receptive_field: int
    multiply_adds: int


class BestEpoch(BaseModel):
    """The job's best epoch so far: the one of the highest `val_accuracy` when the job holds
    training images out to validate on (`data.validation`), chosen without looking at the test
    set; otherwise the one of the highest `test_accuracy`. The first epoch to reach the
    highest stays the best."""

    epoch: int
    test_accuracy: float = Field(
        description="The best epoch's test accuracy: with validation, not necessarily the "
        "highest the job reached"
    )
    val_accuracy: float | None = Field(
        default=None, description="The best epoch's validation accuracy; null without validation"
    )


class CheckpointPublic(BaseModel):
    name: str
    path: str = Field(description="Relative to the artifact dir")
    epoch: int
    test_accuracy: float | None
    val_accuracy: float | None = Field(
        default=None, description="Of its epoch, on the held-out training images; null without"
    )
    sha256: str
    bytes: int
    created_at: datetime
    url: str = Field(description="Where to download it, relative to the API's base URL")

    @classmethod
    def from_row(cls, row: CheckpointRow) -> "CheckpointPublic":
        return cls(
            url=f"/v1/jobs/{row.job_id}/checkpoints/{row.name}",
            name=row.name,
            path=row.path,
            epoch=row.epoch,
            test_accuracy=row.test_accuracy,
            val_accuracy=row.val_accuracy,
            sha256=row.sha256,
            bytes=row.bytes,
            created_at=as_utc(row.created_at),
        )


def metrics_of(row: EpochMetricRow) -> EpochMetrics:
    return EpochMetrics.model_validate(row, from_attributes=True)


class AttemptPublic(BaseModel):
    attempt: int
    worker: str
    start_epoch: int = Field(description="Epochs already done when it started: it resumed there")
    outcome: AttemptOutcome
    started_at: datetime
    ended_at: datetime | None

    @classmethod
    def from_row(cls, row: AttemptRow) -> "AttemptPublic":
        return cls(
            attempt=row.attempt,
            worker=row.worker,
            start_epoch=row.start_epoch,
            outcome=AttemptOutcome(row.outcome),
            started_at=as_utc(row.started_at),
            ended_at=as_utc(row.ended_at),
        )


class JobPublic(BaseModel):
    id: str
    name: str | None
    status: JobStatus
    tags: list[str]
    spec: JobSpec = Field(description="The spec as stored: defaults filled in, preset resolved")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    attempt_history: list[AttemptPublic] = Field(
        description="Each attempt: its worker, the epoch it resumed from, and how it ended"
    )
    worker: str | None
    progress: Progress
    analysis: Summary
    latest_metrics: EpochMetrics | None
    best: BestEpoch | None = Field(
        description="The best epoch: by validation accuracy when the job validates, else by "
        "test accuracy"
    )
    checkpoints: list[CheckpointPublic]
    error: JobError | None
    result: JobResult | None = Field(
        description="What the job produced beyond metrics: an LR range test's curve, or which "
        "images a training job trained and validated on (`split`)"
    )
    study_id: str | None = Field(default=None, description="The study this job is a trial of")
    trial: int | None = Field(default=None, description="Its trial's number in the study")
    pruned_reason: str | None = Field(
        default=None, description="Why the study's pruner stopped it, and after which epoch"
    )

    @classmethod
    def build(
        cls,
        job: Job,
        latest: EpochMetricRow | None,
        checkpoints: list[CheckpointRow],
        attempts: list[AttemptRow],
    ) -> "JobPublic":
        best = None
        if job.best_epoch is not None and job.best_test_accuracy is not None:
            best = BestEpoch(
                epoch=job.best_epoch,
                test_accuracy=job.best_test_accuracy,
                val_accuracy=job.best_val_accuracy,
            )
        return cls(
            id=job.id,
            name=job.name,
            status=JobStatus(job.status),
            tags=job.spec.get("tags", []),
            spec=JobSpec.model_validate(job.spec),
            created_at=as_utc(job.created_at),
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
            attempts=job.attempts,
            attempt_history=[AttemptPublic.from_row(row) for row in attempts],
            worker=job.worker,
            progress=Progress.of(job),
            analysis=Summary(**{k: job.analysis[k] for k in Summary.model_fields}),
            latest_metrics=metrics_of(latest) if latest is not None else None,
            best=best,
            checkpoints=[CheckpointPublic.from_row(row) for row in checkpoints],
            error=JobError.model_validate(job.error) if job.error else None,
            result=JobResult.model_validate(job.result) if job.result else None,
            study_id=job.study_id,
            trial=job.trial,
            pruned_reason=job.pruned_reason,
        )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class MetricsPage(BaseModel):
    job_id: str
    status: JobStatus
    items: list[EpochMetrics]


class CheckpointList(BaseModel):
    items: list[CheckpointPublic]
