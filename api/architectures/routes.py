"""Explaining a model before any training: the analysis and the presets."""

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.auth.deps import TenantDep
from api.core.deps import SettingsDep
from shared.analysis import Analysis
from shared.checks import Problem, SpecRejected, check_model, resolve_model
from shared.presets import PRESETS
from shared.spec import JobSpec, ModelSpec

router = APIRouter(prefix="/v1", tags=["architectures"])


class PresetPublic(BaseModel):
    name: str
    description: str
    model: ModelSpec = Field(description="The preset's layers")
    analysis: Analysis
    job: JobSpec = Field(description="A job body that trains this preset well")


class PresetList(BaseModel):
    items: list[PresetPublic]


@router.post("/architectures/analyze", operation_id="analyze_architecture", response_model=Analysis)
def analyze_architecture(model: ModelSpec, settings: SettingsDep, _tenant: TenantDep) -> Analysis:
    """Per-layer output shape, receptive field, parameters and multiply-adds, without training."""
    try:
        resolved = resolve_model(model)
        return check_model(resolved.layers or [], settings)
    except SpecRejected as rejected:
        # The body here is the model itself, so paths start at its `layers`.
        raise SpecRejected(
            [Problem(p.location[1:], p.message, p.code) for p in rejected.problems]
        ) from rejected


@router.get("/presets", operation_id="list_presets", response_model=PresetList)
def list_presets(settings: SettingsDep, _tenant: TenantDep) -> PresetList:
    """Named models to start from, each with its analysis."""
    items = []
    for preset in PRESETS.values():
        model = ModelSpec(preset=preset.name, layers=list(preset.layers))
        items.append(
            PresetPublic(
                name=preset.name,
                description=preset.description,
                model=model,
                job=JobSpec.model_validate(preset.job()),
                analysis=check_model(list(preset.layers), settings),
            )
        )
    return PresetList(items=items)
