# A job's status and the orders a job listing comes in: the API stores and serves them, the
# client filters and sorts by them. No docstrings on the enums: pydantic would put them in
# the public document as descriptions.
from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    # A study's trial that its pruner stopped early.
    pruned = "pruned"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset(
    {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.pruned}
)


class JobOrder(StrEnum):
    created_at = "created_at"  # newest first
    test_accuracy = "test_accuracy"  # best first; jobs without an epoch yet last
