"""The API's tables. The database is the ledger: a job lives here before any broker hears of it."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, overload

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from api.core.ids import new_id
from shared.job_states import JobStatus
from shared.study_spec import StudySpec

# Deterministic constraint names, so migrations can find them on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...


@overload
def as_utc(moment: None) -> None: ...


def as_utc(moment: datetime | None) -> datetime | None:
    # SQLite hands datetimes back without a zone; everything stored is UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"
    id: str = Field(default_factory=lambda: new_id("ten"), primary_key=True, max_length=40)
    name: str = Field(unique=True, max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    id: str = Field(default_factory=lambda: new_id("key"), primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=40)
    # The visible part of the key, to find its row; the rest is only ever stored hashed.
    prefix: str = Field(unique=True, max_length=32)
    key_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: str = Field(default_factory=lambda: new_id("job"), primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=40)
    name: str | None = Field(default=None, max_length=200)
    status: str = Field(default=JobStatus.queued, index=True, max_length=16)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    analysis: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    epochs: int
    epochs_completed: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    # When the broker was last told of the job; None means it still has to be. `dispatches`
    # counts the messages sent for the current wait, to space out re-sends.
    dispatched_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    dispatches: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    attempts: int = 0
    worker: str | None = Field(default=None, max_length=200)
    lease_token: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    # The best epoch: of the highest validation accuracy when the job holds images out to
    # validate on, else of the highest test accuracy (the first to reach it). Its test
    # accuracy, and its validation accuracy (None without validation).
    best_epoch: int | None = None
    best_test_accuracy: float | None = None
    best_val_accuracy: float | None = None
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # What a job produces beyond metrics and checkpoints, e.g. an LR range test's curve.
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str | None = Field(default=None, max_length=64)
    # A study's trial: the study, and the trial's number in it.
    study_id: str | None = Field(default=None, foreign_key="studies.id", index=True, max_length=40)
    trial: int | None = None
    # Why a pruned job stopped, in words.
    pruned_reason: str | None = Field(default=None, max_length=500)
    # Where the running attempt is within its epoch, as its last heartbeat said (a
    # BatchProgress, plus `reported_at`); None before the first beat.
    live_progress: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )


class JobTag(SQLModel, table=True):
    """One of a job's tags, a row each so that `?tag=` is an indexed lookup. The spec keeps
    them too; these rows only serve the search."""

    __tablename__ = "job_tags"
    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=40)
    tag: str = Field(primary_key=True, index=True, max_length=64)


class AttemptOutcome(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    # The worker shut down and gave the job back after its last checkpoint.
    handed_back = "handed_back"
    # The worker stopped reporting (killed, frozen, lost) until its lease ran out.
    lease_expired = "lease_expired"
    # The study's pruner stopped the trial after an epoch.
    pruned = "pruned"


class AttemptRow(SQLModel, table=True):
    """One attempt at a job: who ran it, from which epoch, and how it ended."""

    __tablename__ = "job_attempts"
    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=40)
    attempt: int = Field(primary_key=True)
    worker: str = Field(max_length=200)
    # Epochs already recorded when the attempt started: where it resumes from.
    start_epoch: int = 0
    outcome: str = Field(default=AttemptOutcome.running, max_length=16)
    started_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    ended_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class EpochMetricRow(SQLModel, table=True):
    __tablename__ = "epoch_metrics"
    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=40)
    epoch: int = Field(primary_key=True)
    attempt: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    # On the held-out training images; None when the job holds none out.
    val_loss: float | None = None
    val_accuracy: float | None = None
    lr: float
    batch_size: int
    epoch_seconds: float
    images_per_second: float
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class CheckpointRow(SQLModel, table=True):
    __tablename__ = "checkpoints"
    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=40)
    name: str = Field(primary_key=True, max_length=200)
    path: str = Field(max_length=500)
    epoch: int
    attempt: int
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    sha256: str = Field(max_length=64)
    bytes: int
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class StudyStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (StudyStatus.succeeded, StudyStatus.failed, StudyStatus.cancelled)


class Study(SQLModel, table=True):
    """A search over job specs; its trials are rows of `trials`, most of them with a job."""

    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: str = Field(default_factory=lambda: new_id("stu"), primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=40)
    name: str | None = Field(default=None, max_length=200)
    status: str = Field(default=StudyStatus.queued, index=True, max_length=16)
    # The study spec as submitted, with its base spec resolved as a job's is.
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # Optuna's study-level state (e.g. the QMC sampler's position in its sequence), kept
    # here so that a restarted API samples on from where it was.
    sampler_state: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    # Parameter importances, and how many finished trials they were computed from.
    importances: dict[str, float] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    importances_trials: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # With `warm_start`: the other study's finished trials as its sampler is told them,
    # taken when this study was submitted (api/studies/warm_start.py), so that every pass
    # tells the same ones whatever becomes of that study.
    warm_trials: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False, server_default="[]"),
    )
    # Scheduler passes in a row that failed on this study (a pass that succeeds resets it):
    # a few in a row end the study, failed, so that one that cannot be scheduled never loops.
    # Kept here, so that a restarted API counts on.
    scheduling_failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str | None = Field(default=None, max_length=64)

    def parsed_spec(self) -> StudySpec:
        """`spec` as a StudySpec, parsed once per loaded row (a stored spec never changes):
        every step of a request or a scheduler pass reads this one."""
        parsed: StudySpec | None = self.__dict__.get(_PARSED_SPEC)
        if parsed is None:
            parsed = StudySpec.model_validate(self.spec)
            # Beside the mapped columns, not one of them: SQLAlchemy and pydantic ignore it.
            object.__setattr__(self, _PARSED_SPEC, parsed)
        return parsed


_PARSED_SPEC = "_parsed_spec"


class TrialRow(SQLModel, table=True):
    """One trial of a study: the parameters sampled, and the job that trains them (None when
    the sampled spec was infeasible and never queued). Its state is its job's status."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id"),)

    study_id: str = Field(foreign_key="studies.id", primary_key=True, max_length=40)
    number: int = Field(primary_key=True)
    params: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    job_id: str | None = Field(default=None, foreign_key="jobs.id", max_length=40)
    # Why an infeasible trial was never trained.
    reason: str | None = Field(default=None, max_length=2000)
    # A confirmation run re-trains this search trial's configuration with another seed.
    confirms: int | None = None
    # Optuna's per-trial state: grid positions, CMA-ES generations, ASHA rungs, constraints.
    system_attrs: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class SchedulerLease(SQLModel, table=True):
    """Who runs a singleton loop (the dispatch sweep, the study scheduler) among the API
    processes, until when."""

    __tablename__ = "scheduler_leases"

    name: str = Field(primary_key=True, max_length=40)
    holder: str = Field(max_length=200)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
