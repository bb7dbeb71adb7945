"""Explaining a model before any training: the analysis and the presets."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import SettingsDep, TenantDep
from shared.checks import Problem, SpecRejected, check_model, resolve_model
from shared.presets import PRESETS
from shared.spec import ModelSpec

router = APIRouter(prefix="/v1", tags=["architectures"])


class PresetPublic(BaseModel):
    name: str
    description: str
    model: dict[str, Any]
    analysis: dict[str, Any]
    job: dict[str, Any] = Field(description="A job body that trains this preset well")


class PresetList(BaseModel):
    items: list[PresetPublic]


@router.post("/architectures/analyze")
def analyze_architecture(
    model: ModelSpec, settings: SettingsDep, _tenant: TenantDep
) -> dict[str, Any]:
    """Per-layer output shape, receptive field, parameters and multiply-adds, without training."""
    try:
        resolved = resolve_model(model)
        return check_model(resolved.layers or [], settings).to_dict()
    except SpecRejected as rejected:
        # The body here is the model itself, so paths start at its `layers`.
        raise SpecRejected(
            [Problem(p.location[1:], p.message, p.code) for p in rejected.problems]
        ) from rejected


@router.get("/presets", response_model=PresetList)
def list_presets(settings: SettingsDep, _tenant: TenantDep) -> PresetList:
    """Named models to start from, each with its analysis."""
    items = []
    for preset in PRESETS.values():
        model = ModelSpec(preset=preset.name, layers=list(preset.layers))
        items.append(
            PresetPublic(
                name=preset.name,
                description=preset.description,
                model=model.model_dump(mode="json"),
                job=preset.job(),
                analysis=check_model(list(preset.layers), settings).to_dict(),
            )
        )
    return PresetList(items=items)
