"""An in-memory Optuna study kept between decisions, told only what changed in the ledger.

A fresh rebuild (optuna_bridge.rebuild) costs a `create_trial` and a deep copy in Optuna's
storage for every trial, each time a trial reports an epoch and each time the scheduler asks
for one: at 200 trials more than the decision itself. A kept study is brought in step with
the ledger's records instead: each trial it holds is compared with what a rebuild would
give it (optuna_bridge.told), and what differs is told, or the study rebuilt.

The ledger stays the only source of truth: every decision is given the records read from
it, and the study is made to hold exactly what a rebuild from them holds, whatever this
process decided or was told before (another API process may have decided since, or a
transaction that wrote a decision may have rolled back). Only a running trial is told what
changed (new epochs' values, attributes added or changed, its end), as Optuna itself tells
one; anything else (a finished trial told otherwise, an attribute gone, a trial asked here
but never stored, another scheduler's trial under the same number, the study's sampler
state told otherwise than added to) rebuilds the study. The sampler and the pruner are new
for each decision, as in a rebuild: a sampler is seeded by the trial's number.
"""

from collections.abc import Sequence
from typing import Any

from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from api.studies.optuna_bridge import (
    ToldTrial,
    TrialRecord,
    frozen_trial,
    rebuild,
    study_pruner,
    told,
    told_trials,
)
from api.studies.optuna_storage import StoredStudy
from shared.study_spec import StudySpec

_MISSING = object()


class KeptStudy:
    """One study's Optuna study, for one kind of decision: asking (told a warm start's trials
    first) or pruning (told none). Not thread-safe: its owner holds a lock around each use."""

    def __init__(self, study_id: str, spec: StudySpec, warm: Sequence[TrialRecord] = ()) -> None:
        self.study_id, self.spec, self.warm = study_id, spec, list(warm)
        self._stored: StoredStudy | None = None
        self._warm_told = told_trials(spec, [], self.warm)
        # Each ledger trial as last told, by number: most come again unchanged.
        self._told: dict[int, tuple[TrialRecord, ToldTrial]] = {}
        # How often it was rebuilt rather than told what changed (for tests and benches).
        self.rebuilds = 0

    def serves(self, spec: StudySpec, warm: Sequence[TrialRecord]) -> bool:
        """Whether this is the study for `spec` and `warm` (a study's never change)."""
        return (self.spec is spec or self.spec == spec) and self.warm == list(warm)

    def in_step(
        self,
        sampler_state: dict[str, Any],
        records: Sequence[TrialRecord],
        sampler: BaseSampler | None = None,
    ) -> StoredStudy:
        """The study holding exactly what a rebuild from `records` would hold, with a new
        pruner as a rebuild makes, and `sampler` to ask with (none to decide pruning)."""
        expected = [*self._warm_told, *self._told_now(records)]
        stored = self._stored
        if stored is None or not self._tell_changes(stored, sampler_state, expected):
            stored = rebuild(
                self.study_id, self.spec, sampler_state, records, sampler, warm=self.warm
            )
            self._stored = stored
            self.rebuilds += 1
        stored.study.pruner = study_pruner(self.spec)
        if sampler is not None:
            stored.study.sampler = sampler
        return stored

    def _told_now(self, records: Sequence[TrialRecord]) -> list[ToldTrial]:
        """The records as a rebuild tells them (optuna_bridge.told), in number order."""
        told_now = {}
        for record in sorted(records, key=lambda r: r.number):
            last = self._told.get(record.number)
            if last is None or last[0] != record:
                last = (record, told(self.spec, record))
            told_now[record.number] = last
        self._told = told_now
        return [trial for _, trial in told_now.values()]

    def _tell_changes(
        self, stored: StoredStudy, sampler_state: dict[str, Any], expected: Sequence[ToldTrial]
    ) -> bool:
        """Tells the study what differs from `expected`; False where only a rebuild can make
        it hold that (the study is then left half told, and must be rebuilt)."""
        held_state = stored.study_attrs()
        if held_state != sampler_state:
            if not held_state.keys() <= sampler_state.keys():
                return False
            stored.set_study_attrs(
                {
                    key: value
                    for key, value in sampler_state.items()
                    if held_state.get(key, _MISSING) != value
                }
            )
        held = stored.trials()
        if len(held) > len(expected):
            return False  # asked here, and never stored (or stored under another number)
        for trial, wanted in zip(held, expected, strict=False):
            if not _holds(trial, wanted) and not _tell_running(stored, trial, wanted):
                return False
        for wanted in expected[len(held) :]:
            stored.study.add_trial(frozen_trial(self.spec, wanted))
        return True


def _holds(trial: FrozenTrial, wanted: ToldTrial) -> bool:
    return (
        trial.state == wanted.state
        and trial.values == wanted.values
        and trial.params == wanted.params
        and trial.intermediate_values == wanted.intermediate
        and trial.system_attrs == wanted.system_attrs
    )


def _tell_running(stored: StoredStudy, trial: FrozenTrial, wanted: ToldTrial) -> bool:
    """Tells a running trial what the ledger holds of it since: the values of new epochs,
    attributes added or changed, and its end. False for anything else."""
    if trial.state != TrialState.RUNNING or trial.params != wanted.params:
        return False
    if wanted.state == TrialState.RUNNING and wanted.values is not None:
        return False
    if wanted.state == TrialState.WAITING:
        return False
    reported = trial.intermediate_values
    if any(wanted.intermediate.get(step, _MISSING) != value for step, value in reported.items()):
        return False
    attrs = trial.system_attrs
    if not attrs.keys() <= wanted.system_attrs.keys():
        return False
    changed = {
        key: value
        for key, value in wanted.system_attrs.items()
        if attrs.get(key, _MISSING) != value
    }
    stored.set_trial_attrs(trial.number, changed)
    for step in sorted(wanted.intermediate.keys() - reported.keys()):
        stored.report(trial.number, step, wanted.intermediate[step])
    if wanted.state != TrialState.RUNNING:
        stored.finish(trial.number, wanted.state, wanted.values)
    return True
