"""A job's Server-Sent Events, found by comparing what the ledger says now with what the
stream last sent: its status when it changes, progress within the epoch, each epoch's
metrics, and the status it ended with.

Every event's id is `<last epoch sent>.<sequence>`: a client that reconnects with
`Last-Event-ID` gets the epochs after that one, then whatever is current.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlmodel import Session

from api.core.models import Job, JobStatus
from api.jobs.live_progress import LiveProgress
from api.jobs.reads import metrics_after
from api.jobs.schemas import metrics_of
from api.web.sse import frame
from shared.messages import MAX_INT32, BatchProgress, JobError

EVENT_TYPES = {
    "status": "first on connecting, then on every change (queued, running, and the status "
    "it ended with, the last event of the stream)",
    "progress": "within the epoch under way, or an LR range test's steps, as the worker's "
    "heartbeat says",
    "metrics": "an epoch's metrics row, as in `GET /v1/jobs/{id}/metrics`",
}
# The schema of each event's data.
EVENT_DATA = {"status": "StatusEvent", "progress": "BatchProgress", "metrics": "EpochMetrics"}


class StatusEvent(BaseModel):
    status: JobStatus | Literal["unknown"] = Field(description="`unknown`: the job was deleted")
    error: JobError | None = None


@dataclass
class JobStream:
    """What the stream has sent so far."""

    last_epoch: int = -1
    status: JobStatus | None = None
    progress_at: datetime | None = None
    sequence: int = 0

    @classmethod
    def resuming(cls, last_event_id: str | None) -> "JobStream":
        """Picks up after the event a reconnecting client saw last; an id this service did
        not send starts from the beginning.

        A malformed id is ignored rather than refused: the client that sends one back is an
        EventSource reconnecting on its own, which cannot act on a 422, only retry it. The
        epoch is bounded as `since_epoch` is (-1 to 2**31 - 1): a larger one is no id of ours
        and would not fit the database's integer (an OverflowError mid-stream).
        """
        epoch, _, _ = (last_event_id or "").partition(".")
        try:
            last_epoch = int(epoch)
        except ValueError:
            return cls()
        if not -1 <= last_epoch <= MAX_INT32:
            return cls()
        return cls(last_epoch=last_epoch)

    def frame(self, event: str, data: BaseModel) -> str:
        self.sequence += 1
        return frame(event, data.model_dump_json(), f"{self.last_epoch}.{self.sequence}")


def job_events_since(engine: Engine, job_id: str, stream: JobStream) -> tuple[list[str], bool]:
    """The frames for what changed since `stream` (updated in place), and whether it ended."""
    with Session(engine) as session:
        # The job first: one that ends after this read still sends its last epochs.
        job = session.get(Job, job_id)
        if job is None:  # deleted while streaming
            return [stream.frame("status", StatusEvent(status="unknown"))], True
        status = JobStatus(job.status)
        frames = []
        if status != stream.status and not status.finished:
            frames.append(stream.frame("status", StatusEvent(status=status)))
            stream.status = status
        for row in metrics_after(session, job_id, stream.last_epoch):
            stream.last_epoch = row.epoch
            frames.append(stream.frame("metrics", metrics_of(row)))
        frames += _progress(job, stream)
        if status.finished:
            error = JobError.model_validate(job.error) if job.error else None
            frames.append(stream.frame("status", StatusEvent(status=status, error=error)))
    return frames, status.finished


def _progress(job: Job, stream: JobStream) -> list[str]:
    live = LiveProgress.of(job)
    if live is None or live.reported_at == stream.progress_at:
        return []
    stream.progress_at = live.reported_at
    counted_down = {**live.model_dump(exclude={"reported_at"}), "eta_seconds": live.eta_now()}
    return [stream.frame("progress", BatchProgress(**counted_down))]


def events_description() -> str:
    listed = "\n".join(
        f"- `{name}` (`{EVENT_DATA[name]}`): {what}" for name, what in EVENT_TYPES.items()
    )
    return (
        "A `text/event-stream` of the job, until it ends. Events:\n"
        f"{listed}\n\nEach event has an `id:`; reconnect with `Last-Event-ID` to resume after it. "
        "A `: keep-alive` comment comes at least every 15 s while nothing happens."
    )
