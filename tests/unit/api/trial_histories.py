"""A study's trials as the ledger reads them (TrialViews over unsaved rows), built without a
database: histories of succeeded, pruned, infeasible, failed and running trials for the
samplers and the pareto pruner."""

from typing import Any

from api.core.models import Job, TrialRow
from api.studies.optuna_bridge import infeasible_attrs
from api.studies.reads import TrialView
from api.studies.schemas import TrialState
from shared.study_spec import StudySpec

STUDY_ID = "stu_history"


def multi_spec(**fields: Any) -> StudySpec:
    """A study of two objectives, validation accuracy and parameters, by default."""
    body: dict[str, Any] = {
        "base": {"epochs": 4, "data": {"train_subset": 256, "validation": 100}},
        "space": {
            "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 16, "step": 4},
        },
        "objectives": [
            {"metric": "val_accuracy", "direction": "maximize"},
            {"metric": "parameters", "direction": "minimize"},
        ],
        "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 2},
        **fields,
    }
    return StudySpec.model_validate(body)


def view(
    number: int,
    state: TrialState,
    params: dict[str, Any],
    *,
    val_accuracy: list[float] | None = None,
    parameters: int = 7000,
    system_attrs: dict[str, Any] | None = None,
    confirms: int | None = None,
) -> TrialView:
    """Trial `number` in `state`; its job (none when infeasible) reported `val_accuracy`
    epoch by epoch, and its analysis counted `parameters`."""
    job = None
    if state != TrialState.infeasible:
        job = Job(
            id=f"job_{number}",
            tenant_id="ten_history",
            status=state.value,
            spec={"seed": number},
            analysis={"parameters": parameters, "multiply_adds": parameters * 150},
            epochs=4,
            epochs_completed=len(val_accuracy or []),
            study_id=STUDY_ID,
            trial=number,
        )
    row = TrialRow(
        study_id=STUDY_ID,
        number=number,
        params=params,
        job_id=job.id if job else None,
        reason="breaks max_parameters" if job is None else None,
        confirms=confirms,
        system_attrs=system_attrs or {},
    )
    metrics = {"val_accuracy": dict(enumerate(val_accuracy or []))}
    return TrialView(row, state, job, metrics)


def infeasible(number: int, params: dict[str, Any], attrs: dict[str, Any]) -> TrialView:
    return view(
        number,
        TrialState.infeasible,
        params,
        system_attrs={**attrs, **infeasible_attrs({"max_parameters": 0.4})},
    )
