"""A study's trials read from the ledger, keeping those that can no longer change.

Reading every trial with its job and every epoch row (reads.study_trials) costs some 30 ms
at 200 trials on PostgreSQL, and an epoch post and a scheduler pass both need the study's
trials. Most of them have ended, and an ended trial changes no more: a job's end
(succeeded, pruned, failed, cancelled) is final, each epoch row is written once and never
changed, a trial's parameters never change, and its attributes are written only by an epoch
post of its running job. An infeasible trial never had a job. So a trial read ended is kept
(a copy of its rows, detached from any session), and each read lists the study's trials
with their jobs' statuses (one light query), checks that each kept trial is still there as
it was kept, and reads in full only the others: the queued and running trials, and the new.
A listing that disagrees with what is kept, which the rules above rule out, forgets every
kept trial and reads them all again.

A trial is kept only from its committed end: the readers (an epoch post, before it prunes;
a scheduler pass, before it stores a trial) read before their own transaction ends a job,
and the one trial an epoch post has changed, not yet committed, is running.
"""

from collections.abc import Sequence

from sqlmodel import Session, col, select

from api.core.models import Job, Study, TrialRow
from api.studies.reads import TrialView, numbered_trials, study_trials
from api.studies.schemas import ACTIVE_TRIAL_STATES


class SettledTrials:
    """One study's ended trials, by number. Not thread-safe: its owner holds a lock around
    `keep` and `kept`."""

    def __init__(self) -> None:
        self.views: dict[int, TrialView] = {}

    def kept(self) -> dict[int, TrialView]:
        return dict(self.views)

    def keep(self, views: Sequence[TrialView], forget_first: bool) -> None:
        if forget_first:
            self.views.clear()
        for view in views:
            if view.state not in ACTIVE_TRIAL_STATES and view.number not in self.views:
                self.views[view.number] = _detached(view)


def study_listing(session: Session, study: Study) -> list[tuple[int, str | None, str | None]]:
    """Each trial's number, job and job status, in trial order."""
    return list(
        session.exec(
            select(TrialRow.number, TrialRow.job_id, Job.status)
            .outerjoin(Job, col(Job.id) == col(TrialRow.job_id))
            .where(TrialRow.study_id == study.id)
            .order_by(col(TrialRow.number))
        )
    )


def read_trials(
    session: Session, study: Study, kept: dict[int, TrialView]
) -> tuple[list[TrialView], bool]:
    """Every trial of the study in trial order, those in `kept` as they were kept and the
    others read; and whether `kept` disagreed with the ledger (then every trial was read)."""
    if not kept:
        return study_trials(session, study), False
    listing = study_listing(session, study)
    numbers = {number for number, _, _ in listing}
    if not kept.keys() <= numbers or any(
        number in kept and not _still(kept[number], job_id, status)
        for number, job_id, status in listing
    ):
        return study_trials(session, study), True
    read = {
        view.number: view
        for view in numbered_trials(session, study, [n for n, _, _ in listing if n not in kept])
    }
    views = [kept[n] if n in kept else read.get(n) for n, _, _ in listing]
    return [view for view in views if view is not None], False


def _still(view: TrialView, job_id: str | None, status: str | None) -> bool:
    """Whether a kept trial is listed as it was kept: the same job, in the same status."""
    if view.row.job_id != job_id:
        return False
    return view.job is None or view.job.status == status


def _detached(view: TrialView) -> TrialView:
    """A copy of the view that outlives the session it was read in, shared read-only."""
    job = Job(**view.job.model_dump()) if view.job is not None else None
    return TrialView(TrialRow(**view.row.model_dump()), view.state, job, view.metrics)
