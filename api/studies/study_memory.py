"""What an API process remembers of each study between decisions: its trials that can no
longer change (settled_trials.py) and the Optuna studies told its trials, one to ask with
and one to prune with (kept_study.py).

Every decision still starts from the ledger: the trials are listed from it each time and
the Optuna study is brought in step with what was read, so a decision is the one a fresh
rebuild from the ledger gives, in this process or in any other, restarted or not. What is
remembered only saves reading and telling what did not change. It is per process (API
processes share nothing but the database) and holds the studies used last, `capacity` of
them; a study beyond that is read and rebuilt in full again, as every decision was before.

`remember=False` reads every trial and rebuilds the Optuna study for each decision: what
every decision cost before this memory, which `make bench-study` measures against it.
"""

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from api.core.models import Study
from api.studies import optuna_bridge, reads
from api.studies.kept_study import KeptStudy
from api.studies.optuna_bridge import Asked, PruneDecision, TrialRecord, make_sampler
from api.studies.reads import TrialView
from api.studies.settled_trials import SettledTrials, read_trials
from shared.study_spec import StudySpec

# Studies remembered at once: each holds its ended trials' rows and two Optuna studies,
# some kilobytes a trial.
DEFAULT_CAPACITY = 64


@dataclass
class _Remembered:
    """One study's memory; its lock is held around each use of what it keeps."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: SettledTrials = field(default_factory=SettledTrials)
    asking: KeptStudy | None = None
    pruning: KeptStudy | None = None


class StudyMemory:
    def __init__(self, remember: bool = True, capacity: int = DEFAULT_CAPACITY) -> None:
        self.remember = remember
        self.capacity = capacity
        self._studies: OrderedDict[str, _Remembered] = OrderedDict()
        self._lock = threading.Lock()

    def trial_views(self, session: Session, study: Study) -> list[TrialView]:
        """Every trial of the study, in trial order, as reads.study_trials reads them. The
        views of ended trials are shared: read them, never change them."""
        if not self.remember:
            return reads.study_trials(session, study)
        memory = self._memory(study.id)
        with memory.lock:
            kept = memory.settled.kept()
        views, disagreed = read_trials(session, study, kept)
        with memory.lock:
            memory.settled.keep(views, forget_first=disagreed)
        return views

    def ask(
        self,
        study_id: str,
        spec: StudySpec,
        sampler_state: dict[str, Any],
        records: Sequence[TrialRecord],
        warm: Sequence[TrialRecord] = (),
        enqueued: dict[str, Any] | None = None,
    ) -> Asked:
        """optuna_bridge.ask, from the study kept for asking."""
        if not self.remember:
            return optuna_bridge.ask(study_id, spec, sampler_state, records, warm, enqueued)
        memory = self._memory(study_id)
        with memory.lock:
            if memory.asking is None or not memory.asking.serves(spec, warm):
                memory.asking = KeptStudy(study_id, spec, warm)
            sampler = make_sampler(spec, len(records))
            stored = memory.asking.in_step(sampler_state, records, sampler)
            return optuna_bridge.ask_told(stored, spec, len(warm), enqueued)

    def decide_pruning(
        self,
        study_id: str,
        spec: StudySpec,
        sampler_state: dict[str, Any],
        records: Sequence[TrialRecord],
        number: int,
    ) -> PruneDecision:
        """optuna_bridge.decide_pruning, from the study kept for pruning."""
        if not self.remember:
            return optuna_bridge.decide_pruning(study_id, spec, sampler_state, records, number)
        memory = self._memory(study_id)
        with memory.lock:
            if memory.pruning is None or not memory.pruning.serves(spec, ()):
                memory.pruning = KeptStudy(study_id, spec)
            stored = memory.pruning.in_step(sampler_state, records)
            return optuna_bridge.decide_told(stored, spec, number)

    def forget(self) -> None:
        with self._lock:
            self._studies.clear()

    def _memory(self, study_id: str) -> _Remembered:
        with self._lock:
            memory = self._studies.get(study_id)
            if memory is None:
                memory = self._studies[study_id] = _Remembered()
                while len(self._studies) > self.capacity:
                    self._studies.popitem(last=False)
            else:
                self._studies.move_to_end(study_id)
            return memory


# This process's memory. The functions below are reads.study_trials, optuna_bridge.ask and
# optuna_bridge.decide_pruning through it, for the scheduler and the pruner.
MEMORY = StudyMemory()


def study_trials(session: Session, study: Study) -> list[TrialView]:
    return MEMORY.trial_views(session, study)


def ask(
    study_id: str,
    spec: StudySpec,
    sampler_state: dict[str, Any],
    records: Sequence[TrialRecord],
    warm: Sequence[TrialRecord] = (),
    enqueued: dict[str, Any] | None = None,
) -> Asked:
    return MEMORY.ask(study_id, spec, sampler_state, records, warm, enqueued)


def decide_pruning(
    study_id: str,
    spec: StudySpec,
    sampler_state: dict[str, Any],
    records: Sequence[TrialRecord],
    number: int,
) -> PruneDecision:
    return MEMORY.decide_pruning(study_id, spec, sampler_state, records, number)
