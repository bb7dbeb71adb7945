"""The dispatch sweep: the database is the ledger and the broker only a doorbell, so the
API rings again for every job the broker may not know of.

- a job stored as queued whose message never reached the broker (broker down at submit)
  is sent again;
- a queued job nobody claimed `redispatch_seconds` after it was sent is sent again, in case
  the broker lost the message; the wait doubles with each re-send;
- a running job whose lease expired (its worker was killed or lost) is queued and sent
  again, until `max_attempts` attempts have been lost that way; then it fails with a reason
  that tells what became of each attempt. Attempts handed back by a worker that shut down
  cleanly do not count.

With several API processes, one sweeps at a time: the one holding the `sweeper` lease in the
database (api.core.leases), renewed at each pass; another takes over once a dead holder's lease
expires. Every change is still a compare-and-set on the job's row, so a holder that loses
the lease in the middle of a slow pass and its successor cannot both requeue one attempt;
a duplicate message is harmless, since a claim is a compare-and-set too.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, and_, or_, update
from sqlmodel import Session, col, select

from api.core.dispatch import Dispatcher
from api.core.loops import LeasedLoop
from api.core.models import AttemptOutcome, AttemptRow, Job, JobStatus, as_utc, utcnow
from api.jobs.ledger import attempts_of, dispatch, end_attempt, may_try_again
from api.ops.metrics import lease_expired
from shared.settings import Settings

log = logging.getLogger(__name__)

LEASE_NAME = "sweeper"
SWEEP_BATCH = 100
# Re-sends of a job that waits in the queue are spaced redispatch_seconds * 2**n apart, n
# capped here: with the default of 5 minutes, at least every 5 h 20 min.
MAX_REDISPATCH_DOUBLINGS = 6


@dataclass
class SweepCounts:
    requeued: int = 0
    failed: int = 0
    sent: int = 0
    resent: int = 0


def _expired(now: datetime) -> ColumnElement[bool]:
    return and_(col(Job.status) == JobStatus.running, col(Job.lease_expires_at) < now)


def describe_attempts(attempts: list[AttemptRow], expired_attempt: int) -> str:
    """One clause per attempt, e.g. "attempt 2 on gpu-3 from epoch 4: lease expired"."""

    def outcome(row: AttemptRow) -> str:
        return AttemptOutcome.lease_expired if row.attempt == expired_attempt else row.outcome

    return "; ".join(
        f"attempt {row.attempt} on {row.worker} from epoch {row.start_epoch}: "
        + outcome(row).replace("_", " ")
        for row in attempts
    )


def sweep(
    session: Session,
    dispatcher: Dispatcher,
    max_attempts: int,
    now: datetime | None = None,
    redispatch_seconds: float = 300.0,
    expire_leases: bool = True,
) -> SweepCounts:
    now = now or utcnow()
    counts = SweepCounts()
    if expire_leases:
        _requeue_expired(session, max_attempts, now, counts)
    _send_undelivered(session, dispatcher, now, redispatch_seconds, counts)
    return counts


def _requeue_expired(
    session: Session, max_attempts: int, now: datetime, counts: SweepCounts
) -> None:
    expired = list(session.exec(select(Job).where(_expired(now)).limit(SWEEP_BATCH)))
    for job in expired:
        history = attempts_of(session, job.id)
        lost_before = sum(row.outcome == AttemptOutcome.lease_expired for row in history)
        give_up = not may_try_again(lost_before, max_attempts)
        values: dict[str, object]
        if give_up:
            values = {
                "status": JobStatus.failed,
                "finished_at": now,
                "lease_expires_at": None,
                "error": {
                    "type": "max_attempts",
                    "message": f"gave up after {lost_before + 1} attempts stopped reporting until "
                    f"their lease expired (max_attempts is {max_attempts}): "
                    + describe_attempts(history, job.attempts),
                },
            }
        else:
            values = {
                "status": JobStatus.queued,
                "lease_expires_at": None,
                "lease_token": None,
                "dispatched_at": None,
                "dispatches": 0,
            }
        # Only if it is still the same expired attempt: another sweeper may have been first.
        result = session.execute(
            update(Job)
            .where(col(Job.id) == job.id, col(Job.attempts) == job.attempts, _expired(now))
            .values(**values)
            # The rows loaded above are not updated in Python: SQLite's naive datetimes
            # would not compare with `now`, and nothing reads them after the commit.
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            end_attempt(session, job.id, job.attempts, AttemptOutcome.lease_expired)
            if give_up:
                counts.failed += 1
            else:
                counts.requeued += 1
            lease_expired("failed" if give_up else "requeued")
            log.warning(
                "job %s: attempt %d lost its lease; %s",
                job.id,
                job.attempts,
                "failed" if give_up else "queued again",
            )
        session.commit()


def _send_undelivered(
    session: Session,
    dispatcher: Dispatcher,
    now: datetime,
    redispatch_seconds: float,
    counts: SweepCounts,
) -> None:
    waiting_since = now - timedelta(seconds=redispatch_seconds)
    candidates = session.exec(
        select(Job.id, Job.dispatched_at, Job.dispatches)
        .where(
            col(Job.status) == JobStatus.queued,
            or_(col(Job.dispatched_at).is_(None), col(Job.dispatched_at) < waiting_since),
        )
        .order_by(col(Job.id))
        .limit(SWEEP_BATCH)
    ).all()
    for job_id, dispatched_at, dispatches in candidates:
        if dispatched_at is not None:
            doublings = min(max(dispatches - 1, 0), MAX_REDISPATCH_DOUBLINGS)
            due = as_utc(dispatched_at) + timedelta(seconds=redispatch_seconds * 2**doublings)
            if due > now:
                continue
        if not dispatch(session, dispatcher, job_id, at=now):
            break  # the broker is still down: try again next sweep
        if dispatched_at is None:
            counts.sent += 1
        else:
            counts.resent += 1
            log.warning(
                "job %s: still unclaimed %d s after it was sent; sent again",
                job_id,
                (now - as_utc(dispatched_at)).total_seconds(),
            )


class Sweeper(LeasedLoop):
    """Runs `sweep` every `sweep_seconds` on a daemon thread until stopped, while this process
    holds the sweeper lease.

    A freshly started API process waits one job lease (`lease_seconds`) before it expires
    any: while the API was down, workers could not renew their leases, and a live worker
    renews its lease at its next heartbeat. The wait counts from this process's start, not
    from when it took the sweeper lease: a process that takes over from a dead one has been
    answering heartbeats all along.
    """

    def __init__(self, engine: Engine, dispatcher: Dispatcher, settings: Settings) -> None:
        super().__init__(LEASE_NAME, engine, settings.sweep_seconds, run_at_start=False)
        self.dispatcher, self.settings = dispatcher, settings
        self._started = time.monotonic()

    def start(self) -> None:
        self._started = time.monotonic()
        super().start()

    def run_once(self) -> SweepCounts | None:
        """One sweep, if this process holds the lease (None if another does)."""
        up_for = time.monotonic() - self._started
        with Session(self.engine) as session:
            if not self.lease.hold(session):
                return None
            return sweep(
                session,
                self.dispatcher,
                self.settings.max_attempts,
                redispatch_seconds=self.settings.redispatch_seconds,
                expire_leases=up_for >= self.settings.lease_seconds,
            )
