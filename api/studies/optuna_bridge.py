"""Optuna's samplers, pruners and importance evaluator, run over the ledger's trials.

Optuna is a library called here, never a second source of truth. For each decision (the
next trial's parameters, whether to stop a trial after an epoch, the importances) an
in-memory Optuna study is rebuilt from what the ledger holds: every trial's parameters,
state, objective, per-epoch values and Optuna's own per-trial and per-study attributes (grid
positions, CMA-ES generations, QMC's place in its sequence, ASHA's rungs), which the ledger
keeps too. A restarted API therefore decides exactly as the one before it would have. The
scheduler and the pruner keep the study between decisions instead and tell it only what
changed (api/studies/kept_study.py, study_memory.py): it then holds what a rebuild would.

Steps are epochs completed: a trial's value after its first epoch is at step 1, so a
pruner's `min_epochs` counts epochs trained.

A study of several objectives is an Optuna study of several directions. Optuna refuses
`report` and `should_prune` in such a study, so its pruner (`pareto`) is ours
(api/studies/pruning.py, over Optuna's dominance helpers in api/studies/pareto.py); how its
pruned and infeasible trials are told to the samplers is decided in reads.optuna_records.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
)
from optuna.distributions import (
    CategoricalDistribution as OptunaCategorical,
)
from optuna.distributions import (
    FloatDistribution as OptunaFloat,
)
from optuna.distributions import (
    IntDistribution as OptunaInt,
)
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GridSampler,
    NSGAIISampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)
from optuna.trial import FrozenTrial, TrialState, create_trial

from api.studies.optuna_storage import StoredStudy
from shared.study_spec import (
    CategoricalDistribution,
    Distribution,
    FloatDistribution,
    Objective,
    StudySpec,
    encode_choice,
    grid_values,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Importances need a few finished trials to mean anything.
MIN_TRIALS_FOR_IMPORTANCES = 4
# Optuna keeps a trial's constraint values in its system attributes under this prefix.
CONSTRAINT_ATTR = "constraints:"
# The value told for a static objective (parameters, multiply-adds) of an infeasible trial
# before any trial finished: more than any model the service admits.
WORST_UNSEEN_COUNT = 1e12


@dataclass
class TrialRecord:
    """What Optuna needs of one search trial, read from the ledger."""

    number: int
    state: TrialState
    params: dict[str, Any]
    # The objective (a study of one), or one value per objective (a study of several).
    value: float | None = None
    values: list[float] | None = None
    # Objective value by step (epochs completed); a study of one objective only.
    intermediate: dict[int, float] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    # Whether the trial trained to its end: what a multi-objective study's importances use.
    succeeded: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as a study row keeps a warm start's trials."""
        return {
            "number": self.number,
            "state": self.state.name,
            "params": self.params,
            "value": self.value,
            "values": self.values,
            "intermediate": {str(step): value for step, value in self.intermediate.items()},
            "system_attrs": self.system_attrs,
            "succeeded": self.succeeded,
        }

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> "TrialRecord":
        return cls(
            number=int(stored["number"]),
            state=TrialState[stored["state"]],
            params=stored["params"],
            value=stored.get("value"),
            values=stored.get("values"),
            intermediate={int(step): value for step, value in stored["intermediate"].items()},
            system_attrs=stored.get("system_attrs", {}),
            succeeded=bool(stored.get("succeeded")),
        )


def optuna_distribution(distribution: Distribution) -> BaseDistribution:
    if isinstance(distribution, CategoricalDistribution):
        return OptunaCategorical([encode_choice(choice) for choice in distribution.choices])
    if isinstance(distribution, FloatDistribution):
        return OptunaFloat(
            distribution.low, distribution.high, log=distribution.log, step=distribution.step
        )
    return OptunaInt(
        distribution.low, distribution.high, log=distribution.log, step=distribution.step
    )


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    return {path: optuna_distribution(d) for path, d in spec.space.items()}


def encoded(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """The ledger's parameters (JSON values) as Optuna holds them."""
    return {
        path: encode_choice(value)
        if isinstance(spec.space[path], CategoricalDistribution)
        else value
        for path, value in params.items()
    }


def decoded(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's parameters as the JSON values they stand for."""
    values = {}
    for path, value in params.items():
        distribution = spec.space[path]
        if isinstance(distribution, CategoricalDistribution):
            codes = [encode_choice(choice) for choice in distribution.choices]
            value = distribution.choices[codes.index(value)]
        values[path] = value
    return values


def trial_seed(seed: int, number: int) -> int:
    """The seed of the sampler that draws trial `number`, in 0..2**31 - 1.

    The sampler is rebuilt for every trial, and the same study seed must still give a
    different, repeatable draw each time. Consecutive integers would seed the samplers'
    generators with related states, and one study's trial seeds would be another's shifted
    by one; SeedSequence mixes the study's seed and the number into unrelated ones."""
    (state,) = np.random.SeedSequence([seed, number]).generate_state(1)
    return int(state) >> 1


def make_sampler(spec: StudySpec, number: int) -> BaseSampler:
    sampler = spec.sampler
    seed = trial_seed(sampler.seed, number)
    if sampler.name == "grid":
        grid = {path: grid_values(d) for path, d in spec.space.items()}
        # The grid's order is shuffled by the seed: it must be the study's, the same for
        # every trial, since each trial takes the grid point of its number.
        return GridSampler(grid, seed=sampler.seed)
    if sampler.name == "random":
        return RandomSampler(seed=seed)
    if sampler.name == "tpe":
        return TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials)
    if sampler.name == "cmaes":
        return CmaEsSampler(
            seed=seed, n_startup_trials=sampler.n_startup_trials, warn_independent_sampling=False
        )
    if sampler.name == "qmc":
        # The sequence is the study seed's; its position is kept in the study's attributes.
        return QMCSampler(seed=sampler.seed, warn_independent_sampling=False)
    if sampler.name == "nsga2":
        # Each trial's generation is among its system attributes, and each generation's
        # parents among the study's: both kept in the ledger like any sampler state.
        return NSGAIISampler(population_size=sampler.population_size, seed=seed)
    raise ValueError(f"no sampler {sampler.name!r}")


def max_epochs(spec: StudySpec) -> int:
    epochs = spec.space.get("epochs")
    if epochs is None:
        return spec.base.epochs
    if isinstance(epochs, CategoricalDistribution):
        return max(int(choice) for choice in epochs.choices)  # type: ignore[arg-type]
    return int(epochs.high)


def make_pruner(spec: StudySpec) -> BasePruner:
    pruner = spec.pruner
    if pruner.name in ("none", "pareto"):
        # pareto is not Optuna's (its studies of several objectives cannot prune): see
        # api/studies/pruning.py.
        return NopPruner()
    if pruner.name == "median":
        return MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_epochs
        )
    if pruner.name == "asha":
        return SuccessiveHalvingPruner(
            min_resource=pruner.min_epochs, reduction_factor=pruner.reduction_factor
        )
    if pruner.name == "hyperband":
        return HyperbandPruner(
            min_resource=pruner.min_epochs,
            max_resource=max(max_epochs(spec), pruner.min_epochs),
            reduction_factor=pruner.reduction_factor,
        )
    raise ValueError(f"no pruner {pruner.name!r}")


@dataclass
class ToldTrial:
    """A trial as an Optuna study is told it: what `create_trial` is given for a ledger
    record, and what a kept study's trial must hold to be that record (kept_study.py)."""

    state: TrialState
    values: list[float] | None
    params: dict[str, Any]  # as Optuna holds them (encoded)
    intermediate: dict[int, float]
    system_attrs: dict[str, Any]


def told(spec: StudySpec, record: TrialRecord) -> ToldTrial:
    state = record.state
    params = encoded(spec, record.params)
    if spec.multi_objective:
        if state == TrialState.COMPLETE and record.values is None:
            state = TrialState.FAIL  # finished without a value of every objective
        values = record.values if state == TrialState.COMPLETE else None
        return ToldTrial(state, values, params, {}, record.system_attrs)
    value = record.value
    if state == TrialState.PRUNED and value is None and record.intermediate:
        # Optuna's own rule: a pruned trial's value is its last reported one.
        value = record.intermediate[max(record.intermediate)]
    if state == TrialState.COMPLETE and value is None:
        # Finished without the metric (a validation metric of a job that held nothing out):
        # it has no value, and Optuna holds no complete trial without one.
        state = TrialState.FAIL
    told_value = value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    return ToldTrial(
        state,
        None if told_value is None else [told_value],
        params,
        record.intermediate,
        record.system_attrs,
    )


def frozen_trial(spec: StudySpec, trial: ToldTrial) -> FrozenTrial:
    return create_trial(
        state=trial.state,
        values=trial.values,
        params=trial.params,
        distributions={path: optuna_distribution(spec.space[path]) for path in trial.params},
        intermediate_values=trial.intermediate,
        system_attrs=trial.system_attrs,
    )


def study_pruner(spec: StudySpec) -> BasePruner:
    """The pruner a rebuilt study holds: Optuna's, or none in a study of several objectives
    (its pruner is ours, api/studies/pruning.py)."""
    return NopPruner() if spec.multi_objective else make_pruner(spec)


# NSGA-II sorts a study's complete trials into generations by this system attribute and
# ignores trials without one.
NSGA2_GENERATION = "NSGAIISampler:generation"


def _warm(spec: StudySpec, record: TrialRecord) -> TrialRecord:
    """A warm start's trial as this study's sampler is told it. For NSGA-II, a trial of a
    study that did not run it has no generation: it is made one of the first, so that the
    warm start's trials are the parents of this study's first children (a study that ran
    NSGA-II keeps its own generations, and this one breeds on from its last)."""
    if spec.sampler.name != "nsga2" or NSGA2_GENERATION in record.system_attrs:
        return record
    attrs = {**record.system_attrs, NSGA2_GENERATION: 0}
    return TrialRecord(**{**record.__dict__, "system_attrs": attrs})


def rebuild(
    study_id: str,
    spec: StudySpec,
    sampler_state: dict[str, Any],
    records: Sequence[TrialRecord],
    sampler: BaseSampler | None = None,
    warm: Sequence[TrialRecord] = (),
) -> StoredStudy:
    """An in-memory Optuna study holding a warm start's trials (`warm`, in their order), then
    the ledger's trials in the order of their numbers: trial `n` of the ledger is Optuna's
    trial `len(warm) + n`."""
    if spec.multi_objective:
        stored = StoredStudy.create(
            study_id,
            sampler or RandomSampler(),
            study_pruner(spec),
            directions=[objective.direction or "maximize" for objective in spec.objective_list],
        )
    else:
        stored = StoredStudy.create(
            study_id, sampler or RandomSampler(), study_pruner(spec), spec.objective.direction
        )
    stored.set_study_attrs(sampler_state)
    for trial in told_trials(spec, records, warm):
        stored.study.add_trial(frozen_trial(spec, trial))
    return stored


def told_trials(
    spec: StudySpec, records: Sequence[TrialRecord], warm: Sequence[TrialRecord] = ()
) -> list[ToldTrial]:
    """The trials a study rebuilt from `records` (after `warm`) holds, in Optuna's order."""
    return [
        *(told(spec, _warm(spec, record)) for record in warm),
        *(told(spec, record) for record in sorted(records, key=lambda r: r.number)),
    ]


@dataclass
class Asked:
    number: int
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    sampler_state: dict[str, Any]


def ask(
    study_id: str,
    spec: StudySpec,
    sampler_state: dict[str, Any],
    records: Sequence[TrialRecord],
    warm: Sequence[TrialRecord] = (),
    enqueued: dict[str, Any] | None = None,
) -> Asked:
    """The next trial's parameters, from the sampler told a warm start's trials and every
    trial so far; `enqueued` (an `enqueue` configuration) fixes them, through Optuna's own
    enqueue_trial, so that the sampler records the trial as it records any (a parameter the
    configuration leaves out is sampled)."""
    number = len(records)
    stored = rebuild(study_id, spec, sampler_state, records, make_sampler(spec, number), warm=warm)
    return ask_told(stored, spec, len(warm), enqueued)


def ask_told(
    stored: StoredStudy, spec: StudySpec, warm_count: int, enqueued: dict[str, Any] | None
) -> Asked:
    """The next trial's parameters from a study told a warm start's `warm_count` trials and
    every ledger trial, whose sampler is the one for the next number (make_sampler)."""
    if enqueued is not None:
        stored.study.enqueue_trial(encoded(spec, enqueued))
    trial = stored.study.ask(distributions(spec))
    return Asked(
        number=trial.number - warm_count,
        params=decoded(spec, trial.params),
        system_attrs=stored.trial_attrs(trial.number),
        sampler_state=stored.study_attrs(),
    )


def infeasible_attrs(violations: dict[str, float]) -> dict[str, Any]:
    """The system attributes that tell Optuna's constrained samplers (TPE) a trial broke its
    constraints; an invalid spec counts as one violated constraint."""
    return {f"{CONSTRAINT_ATTR}{name}": amount for name, amount in violations.items()}


def penalty(objective: Objective, values: Sequence[float]) -> float:
    """The objective told for an infeasible trial: the worst value seen so far (or the worst
    an accuracy can be), so that samplers without constraints (CMA-ES) steer away from it."""
    if objective.maximize:
        return min(values, default=0.0)
    return max(values, default=WORST_UNSEEN_COUNT if objective.static else 1e6)


@dataclass
class PruneDecision:
    prune: bool
    reason: str
    system_attrs: dict[str, Any]


def decide_pruning(
    study_id: str,
    spec: StudySpec,
    sampler_state: dict[str, Any],
    records: Sequence[TrialRecord],
    number: int,
) -> PruneDecision:
    """Whether the pruner stops trial `number` (running, with its values so far)."""
    return decide_told(rebuild(study_id, spec, sampler_state, records), spec, number)


def decide_told(stored: StoredStudy, spec: StudySpec, number: int) -> PruneDecision:
    """decide_pruning in a study told every ledger trial (and no warm start's)."""
    study = stored.study
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    prune = study.pruner.prune(study, trial)
    attrs = stored.trial_attrs(number)
    step = trial.last_step
    reason = ""
    if prune and step is not None:
        reason = (
            f"stopped by the {spec.pruner.name} pruner after {step} epochs: "
            f"{spec.objective.metric} {trial.intermediate_values[step]:.4f} is not among the "
            "trials that go on at this point"
        )
    return PruneDecision(prune=prune, reason=reason, system_attrs=attrs)


def _value_of(index: int) -> Callable[[FrozenTrial], float]:
    def value(trial: FrozenTrial) -> float:
        return float(trial.values[index])

    return value


def importances(
    study_id: str, spec: StudySpec, records: Sequence[TrialRecord]
) -> dict[str, float] | None:
    """fANOVA importances over the finished search trials, or None while too few finished.
    For several objectives, the importances for the first objective measured by training
    (a static one follows from the parameters alone), over the trials that succeeded."""
    if spec.multi_objective:
        complete = [r for r in records if r.succeeded and r.values is not None]
    else:
        complete = [r for r in records if r.state == TrialState.COMPLETE and r.value is not None]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCES or len(spec.space) < 1:
        return None
    study = rebuild(study_id, spec, {}, complete).study
    target = None
    if spec.multi_objective:
        goals = spec.objective_list
        target = _value_of(next(i for i, goal in enumerate(goals) if not goal.static))
    try:
        found = get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=spec.sampler.seed), target=target
        )
    except (RuntimeError, ValueError):
        # e.g. every finished trial has the same value: nothing to attribute.
        return None
    return {path: float(value) for path, value in found.items() if math.isfinite(value)}
