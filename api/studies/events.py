"""A study's Server-Sent Events, found by comparing what the ledger says now with what the
stream last sent: a trial queued, started, its epochs, pruned, finished; then the study's
end.

Each poll reads only what may have changed: the trials not yet settled (ended, and told),
their jobs, and the metrics rows written since the last poll. A stream of a study of many
trials and epochs costs no more each second than one of a few.
"""

import json
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session

from api.core.models import EpochMetricRow, Study, StudyStatus
from api.studies.reads import (
    TrialView,
    epoch_metrics,
    metrics_after,
    new_trial_view,
    take_metrics,
    trial_public,
    unsettled_trials,
)
from api.studies.schemas import TrialState
from api.web.sse import frame


@dataclass
class StreamState:
    """What the stream has told the client so far, per trial number, and what it has read of
    the metrics of trials still going on."""

    states: dict[int, TrialState] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)
    sequence: int = 0
    # Trials that ended and were told: never read again.
    settled: set[int] = field(default_factory=set)
    # The objectives' metrics by epoch of each unsettled trial's job, as far as they were
    # read: by job, then metric, then epoch.
    metrics: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    # The last epoch read of each of those jobs (an epoch whose objectives were all None,
    # validation of a job that held nothing out, is read all the same).
    read_up_to: dict[str, int] = field(default_factory=dict)

    def frame(self, event: str, data: object) -> str:
        self.sequence += 1
        return frame(event, json.dumps(data, default=str), str(self.sequence))

    def last_epochs(self, job_ids: list[str]) -> dict[str, int]:
        return {job_id: self.read_up_to.get(job_id, -1) for job_id in job_ids}

    def take_metrics(self, rows: list[EpochMetricRow], columns: list[str]) -> None:
        for row in rows:
            take_metrics(self.metrics.setdefault(row.job_id, {}), row, columns)
            self.read_up_to[row.job_id] = max(row.epoch, self.read_up_to.get(row.job_id, -1))

    def settle(self, view: TrialView) -> None:
        self.settled.add(view.number)
        if view.job is not None:
            self.metrics.pop(view.job.id, None)
            self.read_up_to.pop(view.job.id, None)


EVENT_TYPES = {
    "trial_queued": "a trial's job was queued",
    "trial_started": "its job started running",
    "epoch": "it recorded an epoch",
    "trial_pruned": "the pruner stopped it",
    "trial_finished": "it ended otherwise (succeeded, failed, cancelled, or was infeasible)",
}


# The schema of each event's data.
EVENT_DATA = {**dict.fromkeys(EVENT_TYPES, "TrialPublic"), "status": "StudyStatusEvent"}


class StudyStatusEvent(BaseModel):
    status: StudyStatus | Literal["unknown"]


def study_events_description() -> str:
    listed = "\n".join(f"- `{name}`: {what}" for name, what in EVENT_TYPES.items())
    return (
        "A `text/event-stream` of the study, until it ends. Each trial event carries the "
        f"trial's leaderboard row (a `TrialPublic`):\n{listed}\n- `status` "
        "(`StudyStatusEvent`): the study's end, the last event.\n\nEach event has an `id:`. "
        "A `: keep-alive` comment comes at least every 15 s while nothing happens."
    )


def _trial_event(state: TrialState, before: TrialState | None) -> str | None:
    if state == before:
        return None
    if state == TrialState.queued:
        return "trial_queued"
    if state == TrialState.running:
        return "trial_started"
    if state == TrialState.pruned:
        return "trial_pruned"
    return "trial_finished"


def study_events_since(engine: Engine, study_id: str, sent: StreamState) -> tuple[list[str], bool]:
    """The frames for what changed since `sent` (updated in place), and whether it ended."""
    with Session(engine) as session:
        study = session.get(Study, study_id)
        if study is None:
            return [sent.frame("status", StudyStatusEvent(status="unknown").model_dump())], True
        spec = study.parsed_spec()
        # Jobs before their metrics: a job read as ended has all its rows in by then.
        trials = unsettled_trials(session, study_id, sent.settled)
        jobs = [job.id for _, job in trials if job is not None]
        sent.take_metrics(metrics_after(session, sent.last_epochs(jobs)), epoch_metrics(spec))
        frames = []
        for row, job in trials:
            view = new_trial_view(row, job)
            if job is not None:
                view.metrics = sent.metrics.get(job.id, {})
            trial = trial_public(view, spec)
            before = sent.states.get(trial.number)
            if trial.epochs_completed > sent.epochs.get(trial.number, 0):
                frames.append(sent.frame("epoch", trial.model_dump(mode="json")))
                sent.epochs[trial.number] = trial.epochs_completed
            event = _trial_event(trial.state, before)
            if event is not None:
                frames.append(sent.frame(event, trial.model_dump(mode="json")))
                sent.states[trial.number] = trial.state
            if not view.active:
                sent.settle(view)
        ended = StudyStatus(study.status).finished
        if ended:
            status = StudyStatusEvent(status=StudyStatus(study.status))
            frames.append(sent.frame("status", status.model_dump(mode="json")))
    return frames, ended
