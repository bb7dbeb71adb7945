"""The dispatch sweep: the database is the ledger and the broker only a doorbell, so the
API rings again for every job the broker may not know of.

- a job stored as queued whose message never reached the broker (broker down at submit)
  is sent again;
- a running job whose lease expired (its worker was killed or lost) is queued and sent
  again, until it has had `max_attempts`; then it fails with a reason.

Every change is a compare-and-set on the job's row, so several API processes may sweep at
once; a duplicate message is harmless, since a claim is a compare-and-set too.
"""

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, and_, update
from sqlmodel import Session, col, select

from api.dispatch import Dispatcher
from api.ledger import mark_dispatched
from api.models import Job, JobStatus, utcnow

log = logging.getLogger(__name__)

SWEEP_BATCH = 100


@dataclass
class SweepCounts:
    requeued: int = 0
    failed: int = 0
    sent: int = 0


def _expired(now: datetime) -> ColumnElement[bool]:
    return and_(col(Job.status) == JobStatus.running, col(Job.lease_expires_at) < now)


def sweep(
    session: Session, dispatcher: Dispatcher, max_attempts: int, now: datetime | None = None
) -> SweepCounts:
    now = now or utcnow()
    counts = SweepCounts()
    lost = list(session.exec(select(Job).where(_expired(now)).limit(SWEEP_BATCH)))
    for job in lost:
        if job.attempts >= max_attempts:
            values: dict[str, object] = {
                "status": JobStatus.failed,
                "finished_at": now,
                "lease_expires_at": None,
                "error": {
                    "type": "max_attempts",
                    "message": f"gave up after {job.attempts} attempts: each one stopped "
                    "reporting until its lease expired (worker killed or lost)",
                },
            }
        else:
            values = {
                "status": JobStatus.queued,
                "lease_expires_at": None,
                "lease_token": None,
                "dispatched_at": None,
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
            if values["status"] == JobStatus.failed:
                counts.failed += 1
            else:
                counts.requeued += 1
            log.warning(
                "job %s: attempt %d lost its lease; %s",
                job.id,
                job.attempts,
                "failed" if values["status"] == JobStatus.failed else "queued again",
            )
    session.commit()

    undispatched = session.exec(
        select(Job.id)
        .where(col(Job.status) == JobStatus.queued, col(Job.dispatched_at).is_(None))
        .order_by(col(Job.id))
        .limit(SWEEP_BATCH)
    ).all()
    for job_id in undispatched:
        if not dispatcher.send(job_id):
            break  # the broker is still down: try again next sweep
        mark_dispatched(session, job_id)
        counts.sent += 1
    return counts


class Sweeper:
    """Runs `sweep` every `interval` seconds on a daemon thread until stopped."""

    def __init__(
        self, engine: Engine, dispatcher: Dispatcher, max_attempts: int, interval: float
    ) -> None:
        self.engine, self.dispatcher = engine, dispatcher
        self.max_attempts, self.interval = max_attempts, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatch-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with Session(self.engine) as session:
                    sweep(session, self.dispatcher, self.max_attempts)
            except Exception:  # noqa: BLE001 - a failed sweep is retried at the next tick
                log.exception("dispatch sweep failed")
