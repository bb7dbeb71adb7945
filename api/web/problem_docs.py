"""What the OpenAPI document says about errors: every error is problem+json, documented once
as a schema and added to each operation where it can happen."""

from typing import Any

from api.web.error_handlers import PROBLEM_JSON

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem detail; validation errors name each bad field.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message", "type"],
                "properties": {
                    "field": {"type": "string", "description": "JSON path, e.g. model.layers[2]"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
PROBLEM_DESCRIPTIONS = {
    400: "The body could not be read",
    401: "Missing, invalid or revoked credentials",
    404: "No such resource (another tenant's is not found either)",
    409: "Conflicts with the resource's state",
    413: "The request body is too large",
    422: "The request is not valid; `errors` names each bad field and what is allowed",
    429: "Too many requests, jobs, studies or open streams; retry after `Retry-After` seconds",
    503: "A service the API relies on is unavailable; retry later",
}
PROBLEM_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    429: {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
            "required": True,
        }
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for a route that can answer these statuses with a problem."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
        }
        if status in PROBLEM_HEADERS:
            response["headers"] = PROBLEM_HEADERS[status]
        responses[status] = response
    return responses


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Adds the errors every route shares to the OpenAPI document, in place.

    FastAPI documents its own 422 body; this service answers every error as problem+json,
    so the 422s are rewritten, and the statuses that come from middleware and dependencies
    (401, 404, 413, 429) are added where they can happen.
    """
    for path, operations in openapi.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            statuses = []
            if operation.get("security"):
                statuses.append(401)
            if any(parameter["in"] == "path" for parameter in operation.get("parameters", [])):
                statuses.append(404)
            if "requestBody" in operation:
                statuses += [400, 413, 422]
            if "422" in responses:
                statuses.append(422)
            if path.startswith("/v1/"):
                statuses.append(429)
            for status, response in problem_responses(*statuses).items():
                responses[str(status)] = response
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    return openapi
