"""The limits in force, stated in the OpenAPI document where a JSON Schema can state them.

The spec models carry only what is always true (an epoch count is at least 1); the limits
are settings of this deployment, checked at submission (shared.checks). Written into the
document too, a generated client or a fuzzer knows them before it sends anything, and the
document admits no body the server would refuse for one of these reasons.
"""

from typing import Any

from shared.presets import PRESETS
from shared.settings import Settings


def _set_maximum(schema: dict[str, Any], field: str, maximum: int) -> None:
    schema["properties"][field]["maximum"] = maximum


def document_limits(openapi: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Adds the configured limits to the spec schemas of `openapi`, in place."""
    schemas = openapi.get("components", {}).get("schemas", {})
    if "JobSpec" in schemas:
        _set_maximum(schemas["JobSpec"], "epochs", settings.max_epochs)
        _set_maximum(schemas["JobSpec"], "batch_size", settings.max_batch_size)
    if "BatchSizeStep" in schemas:
        _set_maximum(schemas["BatchSizeStep"], "batch_size", settings.max_batch_size)
    if "ConvLayer" in schemas:
        _set_maximum(schemas["ConvLayer"], "out_channels", settings.max_channels)
    if "LinearLayer" in schemas:
        _set_maximum(schemas["LinearLayer"], "out_features", settings.max_channels)
    if "ModelSpec" in schemas:
        properties = schemas["ModelSpec"]["properties"]
        for branch in properties["layers"].get("anyOf", []):
            if branch.get("type") == "array":
                branch["maxItems"] = settings.max_layers
        for branch in properties["preset"].get("anyOf", []):
            if branch.get("type") == "string":
                branch["enum"] = sorted(PRESETS)
    return openapi
