"""A lease the database holds: which one of several API processes runs a singleton loop.

Taking or renewing the lease is one compare-and-set on its row, so at most one holder has
it at a time on PostgreSQL and SQLite alike; a holder that dies loses it when it expires.
"""

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from api.models import SchedulerLease, utcnow


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
