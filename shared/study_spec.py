"""The study spec: the body of POST /v1/studies, a search over job specs.

A study names a base job spec, a search space keyed by JSON paths into that spec
(`optimizer.lr`, `model.layers[0].out_channels`), what to optimise, and how to sample and
prune. Everything here is plain data; the API checks the paths against the base spec and
hands sampling and pruning to Optuna.
"""

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, field_validator, model_validator

from shared.layers import MAX_INT32
from shared.spec import JobSpec
from shared.strict import PRINTABLE, StrictModel

# One step of a path: `.name` (or a leading `name`), or `[index]`.
PATH_STEP = re.compile(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
PathStep = str | int

# Bounds on what a study may ask to be checked at submission, where every bound and choice
# is tried as a job of its own (shared.study_checks): at most 48 choices and the 2 bounds of
# each other dimension, under 80 jobs, some 20 ms with a base of the most layers allowed.
MAX_DIMENSIONS = 16
MAX_CHOICES = 32
MAX_CHOICES_IN_ALL = 48
MAX_INT64 = 2**63 - 1


class FloatDistribution(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "FloatDistribution":
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        return self


class IntDistribution(StrictModel):
    type: Literal["int"]
    low: int = Field(ge=-(2**31), le=MAX_INT32)
    high: int = Field(ge=-(2**31), le=MAX_INT32)
    step: int = Field(default=1, ge=1, le=MAX_INT32)
    log: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "IntDistribution":
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log needs a step of 1")
        return self

    @property
    def count(self) -> int:
        """How many values the range holds, by arithmetic: a range is never listed to be
        measured (0 to 2**31 - 1 would be billions of values)."""
        return (self.high - self.low) // self.step + 1

    @property
    def top(self) -> int:
        """The highest value the range holds: `high` itself, or below it by the step."""
        return self.low + (self.count - 1) * self.step


class CategoricalDistribution(StrictModel):
    type: Literal["categorical"]
    choices: list[JsonValue] = Field(min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _distinct(self) -> "CategoricalDistribution":
        encoded = [encode_choice(choice) for choice in self.choices]
        if len(set(encoded)) != len(encoded):
            raise ValueError("choices must be distinct")
        return self


def _check_range(low: float, high: float, log: bool) -> None:
    if low >= high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"log needs low above 0, not {low}")


Distribution = Annotated[
    FloatDistribution | IntDistribution | CategoricalDistribution, Field(discriminator="type")
]


GridValue = str | int | float | bool | None


def grid_values(distribution: Distribution) -> Sequence[GridValue]:
    """A grid dimension's points as Optuna holds them, an int dimension's as a range (nothing
    listed); a float dimension has none (a grid with one is refused at submission)."""
    if isinstance(distribution, CategoricalDistribution):
        return [encode_choice(choice) for choice in distribution.choices]
    if isinstance(distribution, IntDistribution):
        return range(distribution.low, distribution.top + 1, distribution.step)
    raise ValueError("a float dimension has no grid points")


def dimension_size(distribution: Distribution) -> int | None:
    """How many grid points a dimension has, by arithmetic; None for a float dimension."""
    if isinstance(distribution, CategoricalDistribution):
        return len(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return distribution.count
    return None


def outside(distribution: Distribution, value: JsonValue) -> str | None:
    """What `value` must be to be one the distribution can take, or None if it is one: what
    an enqueued configuration is held to, so that it is a point of the space the sampler
    knows."""
    if isinstance(distribution, CategoricalDistribution):
        if encode_choice(value) in [encode_choice(choice) for choice in distribution.choices]:
            return None
        return f"one of the choices {distribution.choices}"[:200] + f", not {value!r}"[:80]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"a number between {distribution.low} and {distribution.high}, not {value!r}"[:200]
    if isinstance(distribution, IntDistribution):
        if not isinstance(value, int) and not float(value).is_integer():
            return f"an integer, not {value}"
        if not distribution.low <= value <= distribution.top:
            return f"between {distribution.low} and {distribution.top}, not {value}"
        if (int(value) - distribution.low) % distribution.step:
            return f"{distribution.low} plus a multiple of {distribution.step}, not {value}"
        return None
    if not distribution.low <= value <= distribution.high:
        return f"between {distribution.low} and {distribution.high}, not {value}"
    if distribution.step is not None:
        steps = (value - distribution.low) / distribution.step
        if abs(steps - round(steps)) > 1e-8:
            return f"{distribution.low} plus a multiple of {distribution.step}, not {value}"
    return None


def encode_choice(choice: JsonValue) -> str | int | float | bool | None:
    """A categorical choice as Optuna can hold it: scalars as they are, lists and objects as
    canonical JSON text (which also makes them readable in optuna-dashboard)."""
    if isinstance(choice, dict | list):
        return json.dumps(choice, sort_keys=True, separators=(",", ":"))
    return choice


# What a study may optimise: a metric each epoch reports (on the images `data.validation`
# holds out of training, or on the training images), or a count the architecture analysis
# gives before anything trains. `test_*` stay readable here, since studies stored before
# validation existed chose on them; a new study on them is refused at submission
# (shared.study_checks): the test images report a winner's score, they never choose it.
Metric = Literal[
    "val_accuracy",
    "val_loss",
    "train_accuracy",
    "train_loss",
    "parameters",
    "multiply_adds",
    "test_accuracy",
    "test_loss",
]
STATIC_METRICS = frozenset({"parameters", "multiply_adds"})
TEST_METRICS = frozenset({"test_accuracy", "test_loss"})
MAX_OBJECTIVES = 3
# The training images a study's base holds out to validate on when it does not say.
STUDY_VALIDATION_IMAGES = 10_000


class Objective(StrictModel):
    metric: Metric = Field(
        default="val_accuracy",
        description="An epoch metric (`val_*`, `train_*`) or a static count known before "
        "training (`parameters`, `multiply_adds`). `test_*` is refused: the test images "
        "report a result, they never choose one",
    )
    direction: Literal["maximize", "minimize"] | None = None
    # The objective of a trial: its best epoch's value, or its last epoch's (a static
    # objective has one value, whatever this says).
    reduce: Literal["best", "last"] = "best"

    @model_validator(mode="after")
    def _direction(self) -> "Objective":
        if self.direction is None:
            self.direction = "maximize" if self.metric.endswith("accuracy") else "minimize"
        return self

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def static(self) -> bool:
        """Known from the architecture analysis before the trial trains."""
        return self.metric in STATIC_METRICS


Seed = Annotated[int, Field(ge=0, le=MAX_INT32)]


class SamplerSpec(StrictModel):
    name: Literal["grid", "random", "tpe", "cmaes", "qmc", "nsga2"] = "tpe"
    # The same seed (and the same results told) gives the same sequence of sampled specs.
    seed: Seed = 0
    # TPE and CMA-ES sample at random for this many trials before they model the results.
    n_startup_trials: int = Field(default=5, ge=0, le=1000)
    # nsga2: the trials of each generation; the first generation is sampled at random.
    population_size: int = Field(default=50, ge=2, le=1000)


class PrunerSpec(StrictModel):
    # pareto (several objectives): stops a trial whose epoch objectives after k epochs are
    # worse than a completed trial's after k epochs, when that trial is no worse on every
    # static objective (parameters, multiply_adds).
    name: Literal["none", "median", "asha", "hyperband", "pareto"] = "none"
    # asha and hyperband: the fewest epochs a trial trains before it can be stopped, and
    # the factor by which each rung keeps fewer trials.
    min_epochs: int = Field(default=1, ge=1, le=MAX_INT32)
    reduction_factor: int = Field(default=3, ge=2, le=100)
    # median: trials that must finish before any is stopped; median and pareto: epochs a
    # trial trains before it can be.
    n_startup_trials: int = Field(default=5, ge=0, le=MAX_INT32)
    n_warmup_epochs: int = Field(default=0, ge=0, le=MAX_INT32)


class Constraints(StrictModel):
    # Compared with the analysis's counts, which can pass 2**31 (multiply-adds): 64 bits.
    max_parameters: int | None = Field(default=None, ge=1, le=MAX_INT64)
    max_multiply_adds: int | None = Field(default=None, ge=1, le=MAX_INT64)


class ConfirmSpec(StrictModel):
    top_k: int = Field(default=3, ge=1, le=20)
    seeds: int = Field(default=3, ge=1, le=20)
    refit: bool = Field(
        default=True,
        description="Train each configuration again on every training image (the base's "
        "`data.validation` set to 0) with `seeds` new seeds, and report the runs' test "
        "accuracy (`test_mean`, `test_std`, `test_min_last3`). False re-runs it as the search "
        "trained it and ranks by the objective's mean over the search trial and its runs",
    )


# Enqueued configurations run before anything is sampled; each is checked as a job at
# submission, like a bound of the space.
MAX_ENQUEUED = 32
STUDY_ID_PATTERN = r"^stu_[A-Za-z0-9_-]{1,36}$"


class WarmStart(StrictModel):
    study_id: str = Field(
        max_length=40,
        pattern=STUDY_ID_PATTERN,
        description="A study of yours with the same `space`: its finished trials are told to "
        "the sampler before this study's first (they are not re-run, and do not count "
        "against `max_trials`)",
    )


class StudySpec(StrictModel):
    name: str | None = Field(default=None, max_length=200, pattern=PRINTABLE)
    base: JobSpec = Field(default_factory=JobSpec)
    space: dict[Annotated[str, Field(max_length=200)], Distribution] = Field(
        min_length=1, max_length=MAX_DIMENSIONS
    )
    objective: Objective = Field(default_factory=Objective)
    objectives: list[Objective] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_OBJECTIVES,
        description="Instead of `objective`: up to 3, each metric once; with more than one "
        "the study is multi-objective and reports its Pareto front",
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    constraints: Constraints = Field(default_factory=Constraints)
    # Search trials; the confirmation runs come on top. The service's own limit
    # (TUNELAB_MAX_TRIALS) is checked at submission.
    max_trials: int = Field(default=20, ge=1, le=MAX_INT32)
    max_parallel_trials: int = Field(default=1, ge=1, le=64)
    confirm: ConfirmSpec | None = None
    enqueue: list[dict[Annotated[str, Field(max_length=200)], JsonValue]] | None = Field(
        default=None,
        max_length=MAX_ENQUEUED,
        description="Configurations to run first, in order, before the sampler proposes "
        "anything: objects of `space` keys and values inside their distributions (a key left "
        "out is sampled). They are search trials and count against `max_trials`",
    )
    warm_start: WarmStart | None = None

    @field_validator("space")
    @classmethod
    def _choices_in_all(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        total = sum(
            len(d.choices) for d in space.values() if isinstance(d, CategoricalDistribution)
        )
        if total > MAX_CHOICES_IN_ALL:
            raise ValueError(
                f"{total} categorical choices in all; at most {MAX_CHOICES_IN_ALL} "
                f"(and {MAX_CHOICES} in one dimension)"
            )
        return space

    @field_validator("objectives")
    @classmethod
    def _each_metric_once(cls, objectives: list[Objective] | None) -> list[Objective] | None:
        metrics = [objective.metric for objective in objectives or []]
        twice = sorted({metric for metric in metrics if metrics.count(metric) > 1})
        if twice:
            raise ValueError(f"each metric at most once; twice: {', '.join(twice)}")
        return objectives

    @model_validator(mode="after")
    def _objective_is_the_first(self) -> "StudySpec":
        # `objective` stays the first objective, so that what reads one objective reads the
        # first; both given and different is refused at submission (study_checks), with
        # the field named.
        if self.objectives is not None and "objective" not in self.model_fields_set:
            self.objective = self.objectives[0]
        return self

    @property
    def objective_list(self) -> list[Objective]:
        """Every objective, in order: `objectives`, or `objective` alone."""
        return list(self.objectives) if self.objectives is not None else [self.objective]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_list) > 1


def parse_path(path: str) -> list[PathStep]:
    """'model.layers[0].out_channels' -> ['model', 'layers', 0, 'out_channels']."""
    steps: list[PathStep] = []
    position = 0
    for match in PATH_STEP.finditer(path):
        if match.start() != position:
            break
        name, index = match.groups()
        steps.append(name if name is not None else int(index))
        position = match.end()
    if position != len(path) or not steps or not isinstance(steps[0], str):
        raise ValueError(
            f"{path!r} is not a path like `optimizer.lr` or `model.layers[0].out_channels`"
        )
    return steps


def path_problem(document: Any, steps: list[PathStep]) -> str | None:
    """Why `steps` does not lead to a value of `document`, or None if it does."""
    node = document
    walked = ""
    for step in steps:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                size = f"{len(node)} items" if isinstance(node, list) else "not a list"
                return f"{walked or 'the spec'} has no item [{step}] ({size})"
            walked += f"[{step}]"
        else:
            if not isinstance(node, dict) or step not in node:
                keys = ", ".join(sorted(node)) if isinstance(node, dict) else "not an object"
                return f"{walked or 'the spec'} has no field `{step}` (it has: {keys})"
            walked += f".{step}" if walked else step
        node = node[step]
    return None


class PathMissing(ValueError):
    """A path that does not lead into a document: a sampled value set at an earlier path (a
    whole `schedule`) may have removed what a later one (`schedule.milestones[0]`) names."""


def with_value(document: Any, steps: list[PathStep], value: Any) -> Any:
    """A copy of `document` with `value` at `steps`. Only the objects and lists along the
    path are copied; the rest is shared with `document`, which is left as it was. Every step
    but the last must exist; the last may add a field to an object, but not an item past a
    list's end. PathMissing (with the reason) otherwise."""
    try:
        return _with_value(document, steps, value)
    except LookupError:
        raise PathMissing(path_problem(document, steps) or "no such field") from None


def _with_value(node: Any, steps: list[PathStep], value: Any) -> Any:
    if not steps:
        return value
    step, rest = steps[0], steps[1:]
    if isinstance(step, int) and isinstance(node, list) and step < len(node):
        items = list(node)
        items[step] = _with_value(node[step], rest, value)
        return items
    if isinstance(step, str) and isinstance(node, dict) and (step in node or not rest):
        return {**node, step: _with_value(node.get(step), rest, value)}
    raise LookupError(step)
