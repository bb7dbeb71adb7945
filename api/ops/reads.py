"""What the operators' metrics read from the ledger when Prometheus scrapes."""

from sqlalchemy import func, text
from sqlmodel import Session, col, select

from api.core.models import Job, JobStatus


def job_counts_by_status(session: Session) -> dict[str, int]:
    """Jobs in each status, every status present (0 when there are none), in one query."""
    rows = session.exec(select(Job.status, func.count()).group_by(col(Job.status))).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update(dict(rows))
    return counts


def ping_database(session: Session) -> None:
    """Raises unless the database answers a trivial query."""
    session.execute(text("SELECT 1"))
