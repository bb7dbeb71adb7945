"""What clients read about jobs: pages and views, each loaded with a fixed number of queries.

The ledger (api.jobs.ledger) changes jobs; this module only reads them. A page of jobs costs one
query for the jobs and one each for their latest metrics, checkpoints and attempts, however
many jobs the page holds.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.core.models import AttemptRow, CheckpointRow, EpochMetricRow, Job, JobStatus, JobTag, Study
from api.jobs.schemas import JobList, JobPublic
from shared.job_states import JobOrder

Row = TypeVar("Row", CheckpointRow, AttemptRow)
# What the list routes page through.
Listed = TypeVar("Listed", Job, Study)


def job_views(session: Session, jobs: Sequence[Job]) -> list[JobPublic]:
    """The public resources of `jobs`, in their order."""
    if not jobs:
        return []
    ids = [job.id for job in jobs]
    latest = _latest_metrics(session, ids)
    checkpoints = _grouped(
        session.exec(
            select(CheckpointRow)
            .where(col(CheckpointRow.job_id).in_(ids))
            .order_by(col(CheckpointRow.epoch), col(CheckpointRow.name))
        )
    )
    attempts = _grouped(
        session.exec(
            select(AttemptRow)
            .where(col(AttemptRow.job_id).in_(ids))
            .order_by(col(AttemptRow.attempt))
        )
    )
    return [
        JobPublic.build(job, latest.get(job.id), checkpoints[job.id], attempts[job.id])
        for job in jobs
    ]


def job_view(session: Session, job: Job) -> JobPublic:
    return job_views(session, [job])[0]


def newest_first(
    session: Session,
    table: type[Listed],
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
) -> tuple[list[Listed], str | None]:
    """A page of the tenant's jobs (or studies), newest first (ids grow with time), and the
    cursor of the next page (None on the last)."""
    query = select(table).where(table.tenant_id == tenant_id)
    if status is not None:
        query = query.where(table.status == status)
    if cursor:
        query = query.where(col(table.id) < cursor)
    rows = list(session.exec(query.order_by(col(table.id).desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    tag: str | None = None
    name: str | None = None


def jobs_page(
    session: Session,
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    where: JobFilter | None = None,
    order: JobOrder = JobOrder.created_at,
) -> JobList:
    """A page of the tenant's jobs that match `where`, in `order`, and the next page's cursor."""
    where = where or JobFilter()
    query = select(Job).where(Job.tenant_id == tenant_id)
    if where.status is not None:
        query = query.where(Job.status == where.status)
    if where.name is not None:
        query = query.where(Job.name == where.name)
    if where.tag is not None:
        query = query.where(col(Job.id).in_(select(JobTag.job_id).where(JobTag.tag == where.tag)))
    if order is JobOrder.test_accuracy:
        jobs, next_cursor = _best_first(session, tenant_id, query, limit, cursor)
    else:
        if cursor:
            # A cursor from the other order still names a job: page on from its id.
            query = query.where(col(Job.id) < cursor.rpartition("~")[2])
        jobs = list(session.exec(query.order_by(col(Job.id).desc()).limit(limit + 1)))
        next_cursor = jobs[limit - 1].id if len(jobs) > limit else None
    return JobList(items=job_views(session, jobs[:limit]), next_cursor=next_cursor)


def _best_first(
    session: Session,
    tenant_id: str,
    query: SelectOfScalar[Job],
    limit: int,
    cursor: str | None,
) -> tuple[list[Job], str | None]:
    """Keyset paging by (best test accuracy, id), both descending, jobs with no accuracy
    last. The cursor is the last row's key, `<accuracy>~<id>` or `-~<id>`; a bare id (from a
    page in the other order) pages on from that job's place in this one."""
    accuracy, unscored = col(Job.best_test_accuracy), col(Job.best_test_accuracy).is_(None)
    if cursor:
        after_accuracy, _, after_id = cursor.rpartition("~")
        if not after_accuracy:
            after_accuracy = _accuracy_key(session.get(Job, after_id), tenant_id)
        if after_accuracy == "-":
            query = query.where(unscored, col(Job.id) < after_id)
        else:
            # The route's pattern admits only finite numbers here.
            value = float(after_accuracy)
            query = query.where(
                or_(
                    accuracy < value,
                    and_(accuracy == value, col(Job.id) < after_id),
                    unscored,
                )
            )
    ordered = query.order_by(unscored, accuracy.desc(), col(Job.id).desc())
    jobs = list(session.exec(ordered.limit(limit + 1)))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    return jobs, f"{_accuracy_key(last, tenant_id)}~{last.id}"


def _accuracy_key(job: Job | None, tenant_id: str) -> str:
    """A job's accuracy as a cursor writes it: `-` for none, and for a job that is not the
    tenant's (or no longer exists), which then pages on among the unscored."""
    if job is None or job.tenant_id != tenant_id or job.best_test_accuracy is None:
        return "-"
    return repr(job.best_test_accuracy)


def metrics_after(session: Session, job_id: str, since_epoch: int | None) -> list[EpochMetricRow]:
    """The job's metrics rows after `since_epoch` (all of them for None), oldest first."""
    query = select(EpochMetricRow).where(EpochMetricRow.job_id == job_id)
    if since_epoch is not None:
        query = query.where(col(EpochMetricRow.epoch) > since_epoch)
    return list(session.exec(query.order_by(col(EpochMetricRow.epoch))))


def checkpoints_of(session: Session, job_id: str) -> list[CheckpointRow]:
    return list(
        session.exec(
            select(CheckpointRow)
            .where(CheckpointRow.job_id == job_id)
            .order_by(col(CheckpointRow.epoch), col(CheckpointRow.name))
        )
    )


def checkpoint_named(session: Session, job_id: str, name: str) -> CheckpointRow | None:
    return session.get(CheckpointRow, (job_id, name))


def _latest_metrics(session: Session, job_ids: list[str]) -> dict[str, EpochMetricRow]:
    newest = (
        select(EpochMetricRow.job_id, func.max(EpochMetricRow.epoch).label("epoch"))
        .where(col(EpochMetricRow.job_id).in_(job_ids))
        .group_by(col(EpochMetricRow.job_id))
        .subquery()
    )
    rows = session.exec(
        select(EpochMetricRow).join(
            newest,
            (col(EpochMetricRow.job_id) == newest.c.job_id)
            & (col(EpochMetricRow.epoch) == newest.c.epoch),
        )
    )
    return {row.job_id: row for row in rows}


def _grouped(rows: Iterable[Row]) -> defaultdict[str, list[Row]]:
    grouped: defaultdict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row.job_id].append(row)
    return grouped
