"""What a study must meet when it is submitted, and what each sampled trial must meet before
it is queued. Each problem names the field to change, as a job's do."""

import math
from typing import Any, Protocol

from pydantic import ValidationError

from shared.analysis import Analysis
from shared.checks import Problem, SpecRejected, admit
from shared.presets import PRESETS
from shared.settings import Settings
from shared.spec import JobSpec
from shared.study_spec import (
    STUDY_VALIDATION_IMAGES,
    TEST_METRICS,
    CategoricalDistribution,
    Constraints,
    FloatDistribution,
    IntDistribution,
    PathMissing,
    PathStep,
    StudySpec,
    dimension_size,
    outside,
    parse_path,
    path_problem,
    with_value,
)

# Where the layers of a model are; a sampled value under it replaces the preset's layers.
LAYERS_PATH: list[PathStep] = ["model", "layers"]
PRESET_PATH: list[PathStep] = ["model", "preset"]
# A 422 lists this many of a space's bad bounds and choices, then stops checking: a body of
# thousands of bad choices costs no more to answer than one of a few, and its answer stays
# short.
MAX_SPACE_PROBLEMS = 20
# How much of a refused value a message quotes, and of the reasons it was refused (which
# may quote it again).
QUOTED_CHARACTERS = 80
REASON_CHARACTERS = 400


def _at(prefix: tuple[str | int, ...], problems: list[Problem]) -> list[Problem]:
    return [Problem((*prefix, *p.location), p.message, p.code) for p in problems]


def sampled_spec(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The job body of a trial: the base spec (as stored, and left as it is) with each sampled
    value set at its path. Sampling inside the layers, or a preset, makes the model the
    trial's own. SpecRejected, naming the path, when an earlier value removed what a later
    path leads into."""
    paths = {path: parse_path(path) for path in params}
    body = base
    if any(steps[:2] == PRESET_PATH for steps in paths.values()):
        body = with_value(body, LAYERS_PATH, None)
    elif any(steps[:2] == LAYERS_PATH for steps in paths.values()):
        body = with_value(body, PRESET_PATH, None)
    for path, value in params.items():
        try:
            body = with_value(body, paths[path], value)
        except PathMissing as missing:
            raise SpecRejected(
                [Problem(tuple(paths[path]), f"the sampled spec has no {path}: {missing}")]
            ) from missing
    return body


def admit_trial(
    base: dict[str, Any], params: dict[str, Any], settings: Settings
) -> tuple[JobSpec, Analysis]:
    """A trial's spec as it will be stored, with its analysis; SpecRejected if it cannot
    train (invalid, or over a service limit)."""
    body = sampled_spec(base, params)
    try:
        spec = JobSpec.model_validate(body)
    except ValidationError as error:
        raise SpecRejected(
            [
                Problem(tuple(item["loc"]), item["msg"].removeprefix("Value error, "))
                for item in error.errors()
            ]
        ) from error
    return admit(spec, settings)


class ModelSize(Protocol):
    """What constraints are checked against: an Analysis, or the counts a job keeps of it."""

    @property
    def parameters(self) -> int: ...

    @property
    def multiply_adds(self) -> int: ...


def constraint_violations(analysis: ModelSize, constraints: Constraints) -> dict[str, float]:
    """How far over each constraint the model is, as a fraction of the limit (0 is within)."""
    violations = {}
    if constraints.max_parameters is not None:
        violations["max_parameters"] = analysis.parameters / constraints.max_parameters - 1
    if constraints.max_multiply_adds is not None:
        violations["max_multiply_adds"] = analysis.multiply_adds / constraints.max_multiply_adds - 1
    return {name: max(0.0, excess) for name, excess in violations.items()}


def describe_problems(problems: list[Problem]) -> str:
    return "; ".join(
        f"{'.'.join(str(step) for step in p.location) or 'spec'}: {p.message}" for p in problems
    )


def shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(value: Any) -> str:
    """A value as a message quotes it, cut short: a refused choice may be a large object."""
    return shortened(repr(value), QUOTED_CHARACTERS)


def _space_problems(study: StudySpec, base: dict[str, Any], settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    for path, distribution in study.space.items():
        if len(problems) >= MAX_SPACE_PROBLEMS:
            problems.append(
                Problem(
                    ("space",),
                    f"the first {MAX_SPACE_PROBLEMS} problems are listed; fix them, and the "
                    "rest of the space is checked",
                )
            )
            break
        where: tuple[str | int, ...] = ("space", path)
        try:
            steps = parse_path(path)
        except ValueError as error:
            problems.append(Problem(where, str(error)))
            continue
        missing = path_problem(base, steps)
        if missing is not None:
            problems.append(Problem(where, f"no such field in the base spec: {missing}"))
            continue
        if study.sampler.name == "grid" and isinstance(distribution, FloatDistribution):
            problems.append(
                Problem(where, "a grid needs every dimension categorical or int, not float")
            )
        if steps == PRESET_PATH and isinstance(distribution, CategoricalDistribution):
            # Any JSON value may be a choice; a preset is a name (a list is not even hashable).
            unknown = [
                c for c in distribution.choices if not isinstance(c, str) or c not in PRESETS
            ]
            if unknown:
                problems.append(
                    Problem(
                        (*where, "choices"),
                        f"unknown presets {quoted(unknown)}; one of: {', '.join(PRESETS)}",
                    )
                )
                continue
        # Each bound or choice on its own, in the base spec, must make a valid job: a space
        # that cannot produce one trainable spec is refused now, not after its trials fail.
        for field, value in _extremes(distribution):
            if len(problems) >= MAX_SPACE_PROBLEMS:
                break
            try:
                admit_trial(base, {path: value}, settings)
            except SpecRejected as rejected:
                problems.append(
                    Problem(
                        (*where, *field),
                        f"{quoted(value)} does not make a valid job: "
                        + shortened(describe_problems(rejected.problems), REASON_CHARACTERS),
                    )
                )
    return problems


def _extremes(
    distribution: FloatDistribution | IntDistribution | CategoricalDistribution,
) -> list[tuple[tuple[str | int, ...], Any]]:
    if isinstance(distribution, CategoricalDistribution):
        return [(("choices", index), choice) for index, choice in enumerate(distribution.choices)]
    if isinstance(distribution, IntDistribution):
        return [(("low",), distribution.low), (("high",), distribution.top)]
    return [(("low",), distribution.low), (("high",), distribution.high)]


def grid_size(study: StudySpec) -> int | None:
    """How many points the grid has, by arithmetic (None for other samplers, or a grid with
    a float dimension, which is refused)."""
    if study.sampler.name != "grid":
        return None
    sizes = [dimension_size(d) for d in study.space.values()]
    return None if None in sizes else math.prod(size or 0 for size in sizes)


def _grid_problems(study: StudySpec, settings: Settings) -> list[Problem]:
    # Optuna's grid sampler lists every point of the grid, each time it is asked: a grid is
    # bounded before anything is built from it.
    size = grid_size(study)
    if size is None or size <= settings.max_grid_points:
        return []
    return [
        Problem(
            ("space",),
            f"a grid of {size:,} points; at most {settings.max_grid_points:,}: give fewer "
            "choices, or a coarser step to an int dimension",
            "limit",
        )
    ]


# Samplers and pruners that work on one objective only.
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
SINGLE_OBJECTIVE_PRUNERS = ("median", "asha", "hyperband")


def _objective_problems(study: StudySpec) -> list[Problem]:
    given = study.objectives is not None
    field = "objectives" if given else "objective"
    if (
        given
        and "objective" in study.model_fields_set
        and study.objective != study.objective_list[0]
    ):
        return [
            Problem(
                ("objectives",),
                "give `objective` (one) or `objectives` (a list of up to 3), not both",
            )
        ]
    problems = []
    goals = study.objective_list
    for index, goal in enumerate(goals):
        where: tuple[str | int, ...] = (field, index, "metric") if given else (field, "metric")
        if goal.metric in TEST_METRICS:
            measured = goal.metric.removeprefix("test_")
            problems.append(
                Problem(
                    where,
                    f"{goal.metric} may not choose hyperparameters: the test images report the "
                    "winner's score, and a score the search was tuned on flatters it. Choose "
                    f"on val_{measured} (the images data.validation holds out of training); "
                    "each trial still reports its test accuracy",
                )
            )
    if all(goal.static for goal in goals):
        problems.append(
            Problem(
                (field,),
                "at least one objective must be measured by training (val_accuracy, val_loss, "
                "train_accuracy, train_loss): parameters and multiply_adds are known from the "
                "analysis before anything trains",
            )
        )
    multi = len(goals) > 1
    if multi and study.sampler.name in SINGLE_OBJECTIVE_SAMPLERS:
        problems.append(
            Problem(
                ("sampler", "name"),
                f"{study.sampler.name} optimises one objective; for several use tpe, nsga2, "
                "random, grid or qmc",
            )
        )
    if multi and study.pruner.name in SINGLE_OBJECTIVE_PRUNERS:
        problems.append(
            Problem(
                ("pruner", "name"),
                f"{study.pruner.name} ranks trials on one objective; a study of several "
                "objectives prunes with pareto (or none)",
            )
        )
    if not multi and study.pruner.name == "pareto":
        problems.append(
            Problem(
                ("pruner", "name"),
                "pareto stops trials dominated on several objectives; with one objective it "
                "would stop every trial behind the best so far: use median, asha or hyperband",
            )
        )
    if multi and study.confirm is not None and not study.confirm.refit:
        problems.append(
            Problem(
                ("confirm", "refit"),
                "without refit, confirmation ranks configurations by one objective; a study "
                "of several objectives confirms its front with refit (true, the default)",
            )
        )
    return problems


def _enqueue_problems(study: StudySpec, base: dict[str, Any], settings: Settings) -> list[Problem]:
    """Each enqueued configuration must be a point of the space that makes a valid job."""
    enqueued = study.enqueue or []
    if len(enqueued) > study.max_trials:
        return [
            Problem(
                ("enqueue",),
                f"{len(enqueued)} configurations, but the study runs {study.max_trials} "
                "trials: enqueue at most max_trials",
            )
        ]
    problems = []
    for index, params in enumerate(enqueued):
        where: tuple[str | int, ...] = ("enqueue", index)
        unknown = sorted(set(params) - set(study.space))
        if unknown:
            problems.append(
                Problem(
                    where,
                    f"{quoted(unknown)} are not in the space; keys are from: "
                    + shortened(", ".join(study.space), REASON_CHARACTERS),
                )
            )
            continue
        missing = sorted(set(study.space) - set(params))
        if missing and study.sampler.name == "grid":
            problems.append(
                Problem(
                    where,
                    f"a grid study runs whole points of its grid: give {quoted(missing)} too",
                )
            )
            continue
        outside_problems = [
            Problem((*where, path), f"must be {reason}")
            for path, value in params.items()
            if (reason := outside(study.space[path], value)) is not None
        ]
        if outside_problems:
            problems += outside_problems
            continue
        try:
            admit_trial(base, params, settings)
        except SpecRejected as rejected:
            problems.append(
                Problem(
                    where,
                    "does not make a valid job: "
                    + shortened(describe_problems(rejected.problems), REASON_CHARACTERS),
                )
            )
        if len(problems) >= MAX_SPACE_PROBLEMS:
            break
    return problems


def _with_validation(study: StudySpec) -> tuple[JobSpec, list[Problem]]:
    """The base as a study trains it: holding STUDY_VALIDATION_IMAGES out to validate on when
    it does not say, since a study chooses on validation; and why a base that holds nothing
    out cannot serve the study's objectives."""
    base = study.base
    if "validation" not in base.data.model_fields_set:
        data = base.data.model_copy(update={"validation": STUDY_VALIDATION_IMAGES})
        return base.model_copy(update={"data": data}), []
    validated = [goal.metric for goal in study.objective_list if goal.metric.startswith("val_")]
    if base.data.validation == 0 and validated:
        return base, [
            Problem(
                ("base", "data", "validation"),
                f"0 holds no images out, and {validated[0]} is measured on them: hold some "
                f"out, or leave data.validation out to hold {STUDY_VALIDATION_IMAGES} out",
            )
        ]
    return base, []


def _held_out_by_the_study(problem: Problem) -> Problem:
    if problem.location != ("data", "train_subset"):
        return problem
    note = f" (a study holds {STUDY_VALIDATION_IMAGES} out unless its base sets data.validation)"
    return Problem(problem.location, problem.message + note, problem.code)


def admit_study(study: StudySpec, settings: Settings) -> StudySpec:
    """A submitted study as it will be stored (its base resolved, holding images out to
    validate on), or SpecRejected."""
    problems = _objective_problems(study)
    base_spec, validation_problems = _with_validation(study)
    problems += validation_problems
    try:
        base, _ = admit(base_spec, settings)
    except SpecRejected as rejected:
        base_problems = rejected.problems
        if base_spec is not study.base:
            base_problems = [_held_out_by_the_study(p) for p in base_problems]
        raise SpecRejected(problems + _at(("base",), base_problems)) from rejected
    if problems:
        raise SpecRejected(problems)
    resolved = study.model_copy(update={"base": base})
    problems = _grid_problems(study, settings)
    base_body = base.model_dump(mode="json")
    problems += _space_problems(resolved, base_body, settings)
    if not problems:
        # Only over a valid space: an enqueued value is checked against its distribution.
        problems += _enqueue_problems(resolved, base_body, settings)
    if study.max_trials > settings.max_trials:
        problems.append(Problem(("max_trials",), f"at most {settings.max_trials}", "limit"))
    if study.confirm is not None:
        runs = study.confirm.top_k * study.confirm.seeds
        if study.max_trials + runs > settings.max_trials:
            problems.append(
                Problem(
                    ("confirm",),
                    f"{study.max_trials} trials and {runs} confirmation runs exceed the limit "
                    f"of {settings.max_trials} runs per study",
                    "limit",
                )
            )
    if problems:
        raise SpecRejected(problems)
    return resolved
