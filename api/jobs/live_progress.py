"""A running attempt's progress within its epoch, as its heartbeats report it.

Stored on the job row (`live_progress`) with the moment it arrived, so that a reader can
tell a fresh report from one an earlier epoch or attempt left behind, and count the ETA
down between beats.
"""

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime

from api.core.models import Job, JobStatus, as_utc, utcnow
from shared.messages import BatchProgress


class LiveProgress(BatchProgress):
    reported_at: AwareDatetime

    @classmethod
    def stored(cls, progress: BatchProgress) -> dict[str, Any]:
        """What the job row keeps of a heartbeat's progress."""
        return cls(**progress.model_dump(), reported_at=utcnow()).model_dump(mode="json")

    @classmethod
    def of(cls, job: Job) -> "LiveProgress | None":
        """The progress of the epoch under way; None unless the job is running and its
        attempt reported on the epoch after its last recorded one."""
        if job.status != JobStatus.running or not job.live_progress:
            return None
        live = cls.model_validate(job.live_progress)
        if live.phase == "train" and live.epoch != job.epochs_completed:
            return None  # a report from an epoch that has been recorded since
        return live

    def eta_now(self, now: datetime | None = None) -> float | None:
        """The reported ETA, less the time since it was reported."""
        if self.eta_seconds is None:
            return None
        elapsed = ((now or utcnow()) - as_utc(self.reported_at)).total_seconds()
        return max(0.0, self.eta_seconds - elapsed)
