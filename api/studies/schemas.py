"""Response models of the study routes."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from api.core.models import StudyStatus
from shared.messages import JobError


class TrialState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    pruned = "pruned"
    # The sampled spec broke a constraint or could not train: never queued.
    infeasible = "infeasible"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_TRIAL_STATES = frozenset({TrialState.queued, TrialState.running})


class TrialCounts(BaseModel):
    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    pruned: int = 0
    infeasible: int = 0
    failed: int = 0
    cancelled: int = 0


# What the test accuracy beside a trial's values is, wherever one is shown.
TEST_ACCURACY = (
    "The test accuracy of its epoch of best validation accuracy (its job's `best`), for "
    "reporting: a study never chooses on test data. Null when its job validated on nothing"
)


class BestTrial(BaseModel):
    trial: int
    job_id: str
    params: dict[str, Any]
    value: float
    test_accuracy: float | None = Field(default=None, description=TEST_ACCURACY)


class ParetoTrial(BaseModel):
    """A trial of the front: no other succeeded search trial is as good on every objective
    and better on one."""

    number: int
    job_id: str
    params: dict[str, Any]
    values: list[float] = Field(description="One per objective, in the order of `objectives`")
    test_accuracy: float | None = Field(default=None, description=TEST_ACCURACY)


class ConfirmedConfiguration(BaseModel):
    """A configuration the search chose, run again with new seeds. With `refit` (the
    default) its runs train on every training image and it reports their test accuracy;
    without, it reports the objective over the search trial and its runs."""

    trial: int = Field(description="The search trial whose configuration was re-run")
    params: dict[str, Any]
    parameters: int | None = Field(default=None, description="The model's parameter count")
    n: int = Field(
        description="Succeeded runs: with refit, the refit runs; without, the search trial "
        "and its confirmation runs"
    )
    job_ids: list[str]
    mean: float | None = Field(
        default=None,
        description="Without refit: the objective's mean over the runs (null with refit: a "
        "refit run holds no images out to measure it on)",
    )
    std: float | None = Field(
        default=None,
        description="Without refit: the objective's sample standard deviation (0 for one run)",
    )
    values: list[float] | None = Field(
        default=None, description="Without refit: the objective of each run"
    )
    test_mean: float | None = Field(
        default=None, description="With refit: the mean of the runs' last-epoch test accuracy"
    )
    test_std: float | None = Field(
        default=None,
        description="With refit: the sample standard deviation of the runs' last-epoch test "
        "accuracy (0 for one run)",
    )
    test_min_last3: float | None = Field(
        default=None,
        description="With refit: the lowest test accuracy of the last three epochs over all "
        "runs, the figure a target such as 99.4% is held to",
    )
    test_values: list[float] | None = Field(
        default=None, description="With refit: each run's last-epoch test accuracy"
    )


class TrialPublic(BaseModel):
    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None = Field(
        description="The objective so far: the best or last epoch's metric (see objective); "
        "null in a study of several objectives, whose trials give `values`"
    )
    values: list[float] | None = Field(
        default=None,
        description="One value per objective (in the order of `objectives`) once each has "
        "one: a static objective's count, an epoch objective's best or last epoch so far",
    )
    test_accuracy: float | None = Field(default=None, description=TEST_ACCURACY)
    pareto_rank: int | None = Field(
        default=None,
        description="In the leaderboard of a study of several objectives: 0 for a trial on "
        "the front (the study's `pareto`), 1 on the front of the rest, and so on; null for "
        "trials that did not succeed, confirmation runs, and studies of one objective",
    )
    epochs_completed: int
    job_id: str | None = Field(description="None when the trial was infeasible")
    reason: str | None = Field(description="Why it was infeasible, pruned or failed")
    confirms: int | None = Field(
        description="For a confirmation run: the search trial whose configuration it re-runs"
    )
    seed: int | None = Field(description="The seed its job trains with")
    started_at: datetime | None = Field(description="When its job first started training")
    finished_at: datetime | None = Field(
        description="When its job ended (for an infeasible trial: when it was sampled)"
    )


class TrialList(BaseModel):
    study_id: str
    items: list[TrialPublic]


class StudyPublic(BaseModel):
    id: str
    name: str | None
    status: StudyStatus
    spec: dict[str, Any] = Field(description="The study as submitted, its base spec resolved")
    created_at: datetime
    finished_at: datetime | None
    trials: TrialCounts
    best: BestTrial | None = Field(
        description="The best succeeded search trial; null for a study of several objectives"
    )
    pareto: list[ParetoTrial] | None = Field(
        default=None,
        description="A study of several objectives: its non-dominated succeeded search "
        "trials, by the first objective, best first (null for a study of one objective)",
    )
    importances: dict[str, float] | None = Field(
        description="fANOVA importance of each parameter, once enough trials succeeded (for "
        "several objectives: for the first one measured by training)"
    )
    confirmed: list[ConfirmedConfiguration] | None = Field(
        description="With `confirm`: the configurations chosen on validation, run again. "
        "With refit, in the order they were chosen, with their test accuracy; without, "
        "ranked by the objective's mean over seeds"
    )
    warm_trials: int = Field(
        default=0,
        description="With `warm_start`: the earlier study's finished trials its sampler was "
        "told first (not re-run, not counted in `trials`)",
    )
    error: JobError | None


class StudyList(BaseModel):
    items: list[StudyPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")
