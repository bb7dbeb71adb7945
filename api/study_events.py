"""A study's Server-Sent Events, found by comparing what the ledger says now with what the
stream last sent: a trial queued, started, its epochs, pruned, finished; then the study's
end."""

import json
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session

from api.models import Study, StudyStatus
from api.study_reads import study_trials, trial_public
from api.study_schemas import TrialState
from shared.study_spec import StudySpec


@dataclass
class StreamState:
    """What the stream has told the client so far, per trial number."""

    states: dict[int, TrialState] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)


def _frame(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


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
            return [_frame("status", {"status": "unknown"})], True
        objective = StudySpec.model_validate(study.spec).objective
        frames = []
        for view in study_trials(session, study):
            trial = trial_public(view, objective)
            before = sent.states.get(trial.number)
            if trial.epochs_completed > sent.epochs.get(trial.number, 0):
                frames.append(_frame("epoch", trial.model_dump(mode="json")))
                sent.epochs[trial.number] = trial.epochs_completed
            event = _trial_event(trial.state, before)
            if event is not None:
                frames.append(_frame(event, trial.model_dump(mode="json")))
                sent.states[trial.number] = trial.state
        ended = StudyStatus(study.status).finished
        if ended:
            frames.append(_frame("status", {"status": study.status}))
    return frames, ended
