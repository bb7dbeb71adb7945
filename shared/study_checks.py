"""What a study must meet when it is submitted, and what each sampled trial must meet before
it is queued. Each problem names the field to change, as a job's do."""

import copy
import math
from typing import Any

from pydantic import ValidationError

from shared.analysis import Analysis
from shared.checks import Problem, SpecRejected, admit
from shared.presets import PRESETS
from shared.settings import Settings
from shared.spec import JobSpec
from shared.study_spec import (
    CategoricalDistribution,
    Constraints,
    FloatDistribution,
    IntDistribution,
    StudySpec,
    grid_values,
    parse_path,
    path_problem,
    set_path,
)

# Where the layers of a model are; a sampled value under it replaces the preset's layers.
LAYERS_PATH = ["model", "layers"]
PRESET_PATH = ["model", "preset"]


def _at(prefix: tuple[str | int, ...], problems: list[Problem]) -> list[Problem]:
    return [Problem((*prefix, *p.location), p.message, p.code) for p in problems]


def sampled_spec(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The job body of a trial: the base spec (as stored) with each sampled value set at its
    path. Sampling inside the layers, or a preset, makes the model the trial's own."""
    body = copy.deepcopy(base)
    paths = {path: parse_path(path) for path in params}
    if any(steps[:1] == ["model"] and steps[1:2] == ["preset"] for steps in paths.values()):
        body["model"]["layers"] = None
    elif any(steps[:2] == LAYERS_PATH for steps in paths.values()):
        body["model"]["preset"] = None
    for path, value in params.items():
        set_path(body, paths[path], copy.deepcopy(value))
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


def constraint_violations(analysis: Analysis, constraints: Constraints) -> dict[str, float]:
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


def _space_problems(study: StudySpec, base: dict[str, Any], settings: Settings) -> list[Problem]:
    problems = []
    for path, distribution in study.space.items():
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
            unknown = [c for c in distribution.choices if c not in PRESETS]
            if unknown:
                problems.append(
                    Problem(
                        (*where, "choices"),
                        f"unknown presets {unknown}; one of: {', '.join(PRESETS)}",
                    )
                )
                continue
        # Each bound or choice on its own, in the base spec, must make a valid job: a space
        # that cannot produce one trainable spec is refused now, not after its trials fail.
        for field, value in _extremes(distribution):
            try:
                admit_trial(base, {path: value}, settings)
            except SpecRejected as rejected:
                problems.append(
                    Problem(
                        (*where, *field),
                        f"{value!r} does not make a valid job: "
                        f"{describe_problems(rejected.problems)}",
                    )
                )
    return problems


def _extremes(
    distribution: FloatDistribution | IntDistribution | CategoricalDistribution,
) -> list[tuple[tuple[str | int, ...], Any]]:
    if isinstance(distribution, CategoricalDistribution):
        return [(("choices", index), choice) for index, choice in enumerate(distribution.choices)]
    if isinstance(distribution, IntDistribution):
        top = distribution.values()[-1]
        return [(("low",), distribution.low), (("high",), top)]
    return [(("low",), distribution.low), (("high",), distribution.high)]


def grid_size(study: StudySpec) -> int | None:
    """How many points the grid has (None for other samplers)."""
    if study.sampler.name != "grid":
        return None
    return math.prod(len(grid_values(d)) for d in study.space.values())


def admit_study(study: StudySpec, settings: Settings) -> StudySpec:
    """A submitted study as it will be stored (its base resolved), or SpecRejected."""
    try:
        base, _ = admit(study.base, settings)
    except SpecRejected as rejected:
        raise SpecRejected(_at(("base",), rejected.problems)) from rejected
    resolved = study.model_copy(update={"base": base})
    problems = _space_problems(resolved, base.model_dump(mode="json"), settings)
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
