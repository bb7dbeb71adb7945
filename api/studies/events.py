"""A study's Server-Sent Events, found by comparing what the ledger says now with what the
stream last sent: a trial queued, started, its epochs, pruned, finished; then the study's
end."""

import json
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session

from api.core.models import Study, StudyStatus
from api.studies.reads import study_trials, trial_public
from api.studies.schemas import TrialState
from api.web.sse import frame


@dataclass
class StreamState:
    """What the stream has told the client so far, per trial number."""

    states: dict[int, TrialState] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)
    sequence: int = 0

    def frame(self, event: str, data: object) -> str:
        self.sequence += 1
        return frame(event, json.dumps(data, default=str), str(self.sequence))


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
        objective = study.parsed_spec().objective
        frames = []
        for view in study_trials(session, study):
            trial = trial_public(view, objective)
            before = sent.states.get(trial.number)
            if trial.epochs_completed > sent.epochs.get(trial.number, 0):
                frames.append(sent.frame("epoch", trial.model_dump(mode="json")))
                sent.epochs[trial.number] = trial.epochs_completed
            event = _trial_event(trial.state, before)
            if event is not None:
                frames.append(sent.frame(event, trial.model_dump(mode="json")))
                sent.states[trial.number] = trial.state
        ended = StudyStatus(study.status).finished
        if ended:
            status = StudyStatusEvent(status=StudyStatus(study.status))
            frames.append(sent.frame("status", status.model_dump(mode="json")))
    return frames, ended
