"""A study kept between decisions (api/studies/kept_study.py, through study_memory.py)
decides exactly as a study rebuilt from the ledger for each decision: the same parameters,
attributes and sampler state from every ask, the same pruning decisions, over random trial
histories of every sampler and pruner, including what a kept study cannot be told (an ask
never stored, a decision whose transaction rolled back). And it is told, not rebuilt, when
nothing of the sort happened."""

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState as OptunaState

from api.studies import optuna_bridge
from api.studies.kept_study import KeptStudy
from api.studies.optuna_bridge import TrialRecord, infeasible_attrs, make_sampler, rebuild
from api.studies.optuna_storage import StoredStudy
from api.studies.reads import TrialView, optuna_records
from api.studies.schemas import ACTIVE_TRIAL_STATES, TrialState
from shared.study_spec import StudySpec
from tests.unit.api.trial_histories import STUDY_ID, view

LR, WIDTH, BATCH = "optimizer.lr", "model.layers[0].out_channels", "batch_size"
EPOCHS = 4
SPACE = {
    LR: {"type": "float", "low": 0.001, "high": 0.3, "log": True},
    WIDTH: {"type": "int", "low": 4, "high": 16, "step": 4},
    BATCH: {"type": "categorical", "choices": [32, 64, 128]},
}
# A grid needs every dimension categorical or a stepped int: 3 x 4 x 3 points.
GRID_SPACE = {**SPACE, LR: {"type": "categorical", "choices": [0.001, 0.01, 0.1]}}
SAMPLERS = {
    "tpe": {"name": "tpe", "n_startup_trials": 2},
    "random": {"name": "random"},
    "nsga2": {"name": "nsga2", "population_size": 3},
    "qmc": {"name": "qmc"},
    "grid": {"name": "grid"},
    "cmaes": {"name": "cmaes", "n_startup_trials": 2},
}
PRUNERS = {
    "none": {"name": "none"},
    "median": {"name": "median", "n_startup_trials": 1, "n_warmup_epochs": 0},
    "asha": {"name": "asha", "min_epochs": 1, "reduction_factor": 2},
    "hyperband": {"name": "hyperband", "min_epochs": 1, "reduction_factor": 2},
}
TWO_OBJECTIVES = [
    {"metric": "val_accuracy", "direction": "maximize"},
    {"metric": "parameters", "direction": "minimize"},
]


def study_spec(sampler: str, pruner: str, seed: int, several: bool) -> StudySpec:
    body: dict[str, Any] = {
        "base": {"epochs": EPOCHS, "data": {"train_subset": 256, "validation": 100}},
        "space": GRID_SPACE if sampler == "grid" else SPACE,
        "sampler": {**SAMPLERS[sampler], "seed": seed},
        "pruner": PRUNERS[pruner],
    }
    if several:
        body["objectives"] = TWO_OBJECTIVES
    return StudySpec.model_validate(body)


@dataclass
class LedgerTrial:
    """A trial as the ledger holds it; replaced, never changed, like a row."""

    number: int
    params: dict[str, Any]
    attrs: dict[str, Any]
    state: TrialState
    accuracies: list[float] = field(default_factory=list)

    def view(self) -> TrialView:
        return view(
            self.number,
            self.state,
            self.params,
            val_accuracy=self.accuracies,
            parameters=int(self.params[WIDTH]) * 1000,
            system_attrs=self.attrs,
        )


@dataclass
class Ledger:
    spec: StudySpec
    warm: list[TrialRecord]
    sampler_state: dict[str, Any] = field(default_factory=dict)
    trials: list[LedgerTrial] = field(default_factory=list)

    def records(self) -> list[TrialRecord]:
        return optuna_records(self.spec, [trial.view() for trial in self.trials])


class Fresh:
    """Every decision from a study rebuilt from the ledger: the reference."""

    def ask(self, ledger: Ledger, enqueued: dict[str, Any] | None) -> optuna_bridge.Asked:
        return optuna_bridge.ask(
            STUDY_ID, ledger.spec, ledger.sampler_state, ledger.records(), ledger.warm, enqueued
        )

    def decide(self, ledger: Ledger, number: int) -> optuna_bridge.PruneDecision:
        return optuna_bridge.decide_pruning(
            STUDY_ID, ledger.spec, ledger.sampler_state, ledger.records(), number
        )


class Kept(Fresh):
    """Every decision from the studies kept for asking and for pruning, as study_memory.py
    keeps them; each is checked to hold what a rebuild holds before it decides."""

    def __init__(self, ledger: Ledger) -> None:
        self.asking = KeptStudy(STUDY_ID, ledger.spec, ledger.warm)
        self.pruning = KeptStudy(STUDY_ID, ledger.spec)

    def ask(self, ledger: Ledger, enqueued: dict[str, Any] | None) -> optuna_bridge.Asked:
        records = ledger.records()
        sampler = make_sampler(ledger.spec, len(records))
        stored = self.asking.in_step(ledger.sampler_state, records, sampler)
        rebuilt = rebuild(STUDY_ID, ledger.spec, ledger.sampler_state, records, warm=ledger.warm)
        assert holdings(stored) == holdings(rebuilt)
        return optuna_bridge.ask_told(stored, ledger.spec, len(ledger.warm), enqueued)

    def decide(self, ledger: Ledger, number: int) -> optuna_bridge.PruneDecision:
        records = ledger.records()
        stored = self.pruning.in_step(ledger.sampler_state, records)
        rebuilt = rebuild(STUDY_ID, ledger.spec, ledger.sampler_state, records)
        assert holdings(stored) == holdings(rebuilt)
        return optuna_bridge.decide_told(stored, ledger.spec, number)


def holdings(stored: StoredStudy) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """What a study's sampler and pruner may read: the study's attributes, and each trial's
    state, values, parameters with their distributions, values by step and attributes."""
    return stored.study_attrs(), [
        (
            trial.number,
            trial.state,
            trial.values,
            trial.params,
            trial.distributions,
            trial.intermediate_values,
            trial.system_attrs,
        )
        for trial in stored.trials()
    ]


def warm_record(number: int, lr: float, width: int, accuracy: float, several: bool) -> TrialRecord:
    return TrialRecord(
        number=number,
        state=OptunaState.COMPLETE,
        params={LR: lr, WIDTH: width, BATCH: 64},
        value=None if several else accuracy,
        values=[accuracy, width * 1000.0] if several else None,
        intermediate={} if several else {1: accuracy},
        succeeded=True,
    )


# What happens next in a study: a kind of step, which trial (an index among those it may be),
# and a value (an accuracy; how a trial is stored, or how it ends).
ASKS = ("ask", "lost ask", "asked elsewhere")
KINDS_OF_STEP = [*ASKS, "ask", "ask", "end", "rolled back", "repeated epoch", *["epoch"] * 6]
STEPS = st.tuples(
    st.sampled_from(KINDS_OF_STEP),
    st.integers(0, 1000),
    st.floats(0.05, 0.99),
)


@st.composite
def histories(
    draw: st.DrawFn, sampler: str, pruner: str, several: bool
) -> tuple[Ledger, list[tuple[str, int, float]], bool]:
    spec = study_spec(sampler, pruner, draw(st.integers(0, 2**31 - 1)), several)
    warm = []
    if sampler != "grid":
        for number in range(draw(st.integers(0, 2))):
            lr = draw(st.floats(0.001, 0.3))
            width = draw(st.sampled_from([4, 8, 12, 16]))
            warm.append(warm_record(number, lr, width, draw(st.floats(0.1, 0.9)), several))
    enqueue_first = draw(st.booleans())
    return Ledger(spec, warm), draw(st.lists(STEPS, min_size=8, max_size=40)), enqueue_first


def play(ledger: Ledger, steps: list[tuple[str, int, float]], enqueue_first: bool) -> None:
    """Plays the steps on the ledger, deciding each time both ways, and compares."""
    fresh, kept = Fresh(), Kept(ledger)
    asks = 0
    for kind, pick, value in steps:
        active = [trial for trial in ledger.trials if trial.state in ACTIVE_TRIAL_STATES]
        if kind in ASKS or not active:
            if asks >= 14:
                continue
            enqueued = None
            if enqueue_first and not ledger.trials:
                # A grid takes whole configurations only; others sample what one leaves out.
                enqueued = {LR: 0.01, WIDTH: 8, BATCH: 64} if grid(ledger) else {LR: 0.01}
            asked = fresh.ask(ledger, enqueued)
            if kind != "asked elsewhere":  # by another API process's scheduler
                assert kept.ask(ledger, enqueued) == asked
            asks += 1
            if kind != "lost ask":  # e.g. the tenant had no free slot: never stored
                store(ledger, asked, value)
            continue
        trial = active[pick % len(active)]
        if kind == "end":
            end(ledger, trial, value)
        elif kind == "repeated epoch" and trial.accuracies:
            # A resumed attempt posts an epoch the ledger has: its pruner is asked again.
            decide(ledger, ledger.trials.index(trial), fresh, kept)
        else:
            epoch(ledger, trial, value, fresh, kept, rolled_back=kind == "rolled back")
    assert kept.ask(ledger, None) == fresh.ask(ledger, None)


def grid(ledger: Ledger) -> bool:
    return ledger.spec.sampler.name == "grid"


def store(ledger: Ledger, asked: optuna_bridge.Asked, value: float) -> None:
    """Stores the asked trial as the scheduler does: queued, with the constraints it meets
    or none, or infeasible, with the one it breaks."""
    violations = {}
    if value < 0.3:
        violations = {"max_parameters": 0.4 if value < 0.15 else -0.5}
    ledger.trials.append(
        LedgerTrial(
            asked.number,
            asked.params,
            {**asked.system_attrs, **infeasible_attrs(violations)},
            TrialState.infeasible if value < 0.15 else TrialState.queued,
        )
    )
    ledger.sampler_state = asked.sampler_state


def replace(ledger: Ledger, trial: LedgerTrial, **changes: Any) -> None:
    ledger.trials[ledger.trials.index(trial)] = LedgerTrial(**{**trial.__dict__, **changes})


def epoch(
    ledger: Ledger, trial: LedgerTrial, accuracy: float, fresh: Fresh, kept: Kept, rolled_back: bool
) -> None:
    """Trial reports an epoch; its pruner is asked as an epoch post asks it (never after
    the last epoch). A rolled back post leaves the ledger as it was."""
    accuracies = [*trial.accuracies, round(accuracy, 4)]
    before = trial
    replace(ledger, trial, accuracies=accuracies, state=TrialState.running)
    trial = ledger.trials[trial.number]
    decision = decide(ledger, trial.number, fresh, kept, apply=not rolled_back)
    if rolled_back:
        ledger.trials[trial.number] = before
        return
    if decision is not None and decision.prune:
        replace(ledger, ledger.trials[trial.number], state=TrialState.pruned)
    elif len(accuracies) == EPOCHS:
        replace(ledger, ledger.trials[trial.number], state=TrialState.succeeded)


def decide(
    ledger: Ledger, number: int, fresh: Fresh, kept: Kept, apply: bool = True
) -> optuna_bridge.PruneDecision | None:
    """Asks the pruner about trial `number`'s last epoch both ways, as prune_after_epoch
    does (never after the last epoch), and keeps the attributes it wrote."""
    trial = ledger.trials[number]
    if (
        ledger.spec.multi_objective
        or ledger.spec.pruner.name == "none"
        or len(trial.accuracies) >= EPOCHS
    ):
        return None
    decision = fresh.decide(ledger, number)
    assert kept.decide(ledger, number) == decision
    if apply:
        replace(ledger, trial, attrs=decision.system_attrs)
    return decision


def end(ledger: Ledger, trial: LedgerTrial, value: float) -> None:
    if value < 0.3:
        state = TrialState.failed
    elif value < 0.4:
        state = TrialState.cancelled
    elif value < 0.5 and trial.accuracies:
        state = TrialState.pruned
    else:
        state = TrialState.succeeded if trial.accuracies else TrialState.failed
    replace(ledger, trial, state=state)


# Every sampler with every pruner for one objective; for several, every sampler that takes
# them (CMA-ES does not), with no pruner of Optuna's (the pareto pruner is not Optuna's).
KINDS = [
    *((sampler, pruner, False) for sampler in SAMPLERS for pruner in PRUNERS),
    *((sampler, "none", True) for sampler in SAMPLERS if sampler != "cmaes"),
]


@pytest.mark.parametrize(("sampler", "pruner", "several"), KINDS)
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_kept_study_decides_as_a_rebuilt_one(sampler, pruner, several, data):
    ledger, steps, enqueue_first = data.draw(histories(sampler, pruner, several))
    play(ledger, steps, enqueue_first)


def asha_spec() -> StudySpec:
    return study_spec("tpe", "asha", 5, several=False)


def test_a_study_played_without_mishaps_is_told_not_rebuilt():
    ledger = Ledger(asha_spec(), [])
    fresh, kept = Fresh(), Kept(ledger)
    for number in range(12):
        asked = kept.ask(ledger, None)
        assert asked == fresh.ask(ledger, None)
        store(ledger, asked, 0.5)
        for step in range(EPOCHS):
            trial = ledger.trials[number]
            if trial.state not in ACTIVE_TRIAL_STATES:
                break
            accuracy = 0.5 + 0.03 * ((number * 7) % 5) + 0.05 * step
            epoch(ledger, trial, accuracy, fresh, kept, rolled_back=False)
    states = {trial.state for trial in ledger.trials}
    assert {TrialState.pruned, TrialState.succeeded} <= states
    assert (kept.asking.rebuilds, kept.pruning.rebuilds) == (1, 1)


def test_what_cannot_be_told_rebuilds_the_study():
    ledger = Ledger(asha_spec(), [])
    kept = KeptStudy(STUDY_ID, ledger.spec)
    for number in range(3):
        sampler = make_sampler(ledger.spec, number)
        stored = kept.in_step(ledger.sampler_state, ledger.records(), sampler)
        store(ledger, optuna_bridge.ask_told(stored, ledger.spec, 0, None), 0.5)
        replace(ledger, ledger.trials[number], accuracies=[0.5], state=TrialState.succeeded)
    assert kept.rebuilds == 1
    # An ask never stored: the study holds a trial the ledger does not.
    optuna_bridge.ask_told(
        kept.in_step(ledger.sampler_state, ledger.records()), ledger.spec, 0, None
    )
    kept.in_step(ledger.sampler_state, ledger.records())
    assert kept.rebuilds == 2
    # A finished trial told otherwise (an infeasible trial's penalty moves with the worst
    # value seen): Optuna cannot change a finished trial.
    replace(ledger, ledger.trials[0], accuracies=[0.4])
    kept.in_step(ledger.sampler_state, ledger.records())
    assert kept.rebuilds == 3
    # The sampler state told without a key it had.
    kept.in_step({"elsewhere": 1}, ledger.records())
    kept.in_step({}, ledger.records())
    assert kept.rebuilds == 4
