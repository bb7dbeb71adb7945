"""What workers and the API say to each other over the internal routes."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.spec import JobSpec
from shared.strict import PRINTABLE


class Message(BaseModel):
    # A non-finite metric cannot be stored (SQLite keeps NaN as NULL) nor read back as JSON.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# The database's integer columns are 32-bit.
MAX_INT32 = 2**31 - 1


class EpochMetrics(Message):
    epoch: int = Field(ge=0, le=MAX_INT32)
    train_loss: float
    train_accuracy: float = Field(ge=0.0, le=1.0)
    test_loss: float
    test_accuracy: float = Field(ge=0.0, le=1.0)
    val_loss: float | None = Field(
        default=None,
        description="On the training images the job holds out (data.validation); null when "
        "it holds none out",
    )
    val_accuracy: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="On the training images the job holds out (data.validation); null when "
        "it holds none out",
    )
    # The lr and batch size the epoch started with.
    lr: float
    batch_size: int = Field(ge=1, le=MAX_INT32)
    epoch_seconds: float = Field(ge=0.0)
    images_per_second: float = Field(ge=0.0)


class CheckpointRecord(Message):
    # A plain file name: no folders, no leading dot, nothing a path could be built from.
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # Relative to the artifact dir: "{job_id}/{name}".
    path: str = Field(min_length=1, max_length=500)
    epoch: int = Field(ge=0, le=MAX_INT32)
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0, le=MAX_INT32)


class CheckpointStored(Message):
    """The answer to a checkpoint upload: the file the API now keeps under that name (201),
    or already kept, byte for byte (200)."""

    name: str
    sha256: str
    bytes: int


class ClaimRequest(Message):
    worker: str = Field(min_length=1, max_length=200, pattern=PRINTABLE)


class Claim(Message):
    job_id: str
    attempt: int
    lease_token: str
    lease_seconds: float
    spec: JobSpec
    checkpoints: list[CheckpointRecord] = []


class AttemptPost(Message):
    attempt: int = Field(ge=1)
    lease_token: str


class EpochReport(AttemptPost):
    metrics: EpochMetrics
    checkpoint: CheckpointRecord | None = None


class BatchProgress(Message):
    """Where an attempt is within its epoch (or within an LR range test's sweep)."""

    phase: Literal["train", "lr_range_test"] = "train"
    # The epoch under way, numbered from 0; an LR range test is one "epoch" of its steps.
    epoch: int = Field(ge=0, le=MAX_INT32)
    batches_completed: int = Field(ge=0, le=MAX_INT32)
    batches: int = Field(ge=1, le=MAX_INT32)
    images_per_second: float = Field(ge=0.0)
    # Until the whole job ends, at the pace measured so far; None before there is a pace.
    eta_seconds: float | None = Field(default=None, ge=0.0)


class Heartbeat(AttemptPost):
    # The newest progress the trainer reported, if any since the attempt began.
    progress: BatchProgress | None = None


class HandBack(AttemptPost):
    """The worker is shutting down: queue the job again, to resume from its last checkpoint."""


class JobError(Message):
    type: str
    message: str


FinishStatus = Literal["succeeded", "failed", "cancelled"]


class LrRangePoint(Message):
    lr: float
    loss: float
    smoothed_loss: float


class LrRangeResult(Message):
    points: list[LrRangePoint]
    # Where the smoothed loss falls fastest: a good peak lr for one-cycle, or a constant lr.
    suggested_lr: float | None
    # The lr of the lowest smoothed loss; a tenth of it is another common choice.
    min_loss_lr: float | None
    diverged_at_lr: float | None


class DataSplit(Message):
    """Which images of the training file a job trained on and which it held out to validate
    on: how many, and the SHA-256 of their indices (ascending, each 8 bytes little-endian), so
    that two jobs' splits can be compared, and a split checked against the files."""

    train_images: int = Field(ge=0, le=MAX_INT32)
    validation_images: int = Field(ge=0, le=MAX_INT32)
    train_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    validation_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class JobResult(Message):
    lr_range_test: LrRangeResult | None = None
    # What a training job trained and validated on.
    split: DataSplit | None = None


class FinishReport(AttemptPost):
    status: FinishStatus
    error: JobError | None = None
    result: JobResult | None = None


class AttemptAnswer(Message):
    """The API's answer to every post of an attempt: whether to keep going."""

    cancelled: bool
    # The study's pruner stopped this trial: the job has ended, stop training.
    pruned: bool = False
