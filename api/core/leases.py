"""A lease the database holds: which one of several API processes runs a singleton loop
(the dispatch sweep, the study scheduler).

Taking or renewing the lease is one compare-and-set on its row, so at most one holder has
it at a time on PostgreSQL and SQLite alike; a holder that dies loses it when it expires.
"""

import logging
import os
import socket
from datetime import timedelta

from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from api.core.models import SchedulerLease, utcnow

log = logging.getLogger(__name__)


class LoopLease:
    """The lease of a loop that runs in one API process at a time: taken or renewed at the
    start of each pass, given up on shutdown. It says in the log when this process starts
    or stops holding it, so an operator can tell which process runs the loop."""

    def __init__(self, name: str, interval: float, loop: object) -> None:
        self.name = name
        # Host, pid and the loop object: unique among live processes.
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{id(loop):x}"
        # Long enough to outlast a slow pass, short enough that a dead holder's successor
        # takes over within seconds.
        self.seconds = max(10.0, 5 * interval)
        self._held = False

    def hold(self, session: Session) -> bool:
        """Takes or renews the lease; False while another process holds it."""
        held = hold(session, self.name, self.holder, self.seconds)
        if held != self._held:
            log.info("%s lease %s by %s", self.name, "taken" if held else "lost", self.holder)
        self._held = held
        return held

    def release(self, engine: Engine) -> None:
        """Gives the lease up, if held, so that another process need not wait it out."""
        if not self._held:
            return
        try:
            with Session(engine) as session:
                release(session, self.name, self.holder)
            self._held = False
            log.info("%s lease released by %s", self.name, self.holder)
        except Exception:  # noqa: BLE001 - the lease then simply expires
            log.warning("could not release the %s lease", self.name, exc_info=True)


def hold(session: Session, name: str, holder: str, seconds: float) -> bool:
    """Takes the lease `name` for `holder` (or renews it); False while another holds it."""
    now = utcnow()
    expires = now + timedelta(seconds=seconds)
    taken = session.execute(
        update(SchedulerLease)
        .where(
            col(SchedulerLease.name) == name,
            or_(col(SchedulerLease.holder) == holder, col(SchedulerLease.expires_at) < now),
        )
        .values(holder=holder, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount:  # type: ignore[attr-defined]
        session.commit()
        return True
    session.rollback()
    if session.get(SchedulerLease, name) is not None:
        return False
    session.add(SchedulerLease(name=name, holder=holder, expires_at=expires))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # another process made the row first, and holds it
        return False
    return True


def release(session: Session, name: str, holder: str) -> None:
    """Gives the lease up at once (on shutdown), so another process need not wait it out."""
    session.execute(
        update(SchedulerLease)
        .where(col(SchedulerLease.name) == name, col(SchedulerLease.holder) == holder)
        .values(expires_at=utcnow() - timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )
    session.commit()
