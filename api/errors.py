"""One error tree, one handler: domain errors carry their status and become problem+json."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.checks import Problem, SpecRejected

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class TunelabError(Exception):
    status: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self, detail: str, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        # Extra members of the problem body, for a client to act on without parsing `detail`.
        self.extensions = extensions


class Unauthorized(TunelabError):
    status, code, title = 401, "unauthorized", "Missing or invalid credentials"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class JobNotFound(TunelabError):
    status, code, title = 404, "job-not-found", "Job not found"


class CheckpointNotFound(TunelabError):
    status, code, title = 404, "checkpoint-not-found", "Checkpoint not found"


class JobNotCancellable(TunelabError):
    status, code, title = 409, "job-not-cancellable", "Job cannot be cancelled"


class JobNotClaimable(TunelabError):
    status, code, title = 409, "job-not-claimable", "Job cannot be claimed"


class StaleAttempt(TunelabError):
    status, code, title = 409, "stale-attempt", "This attempt no longer holds the job"


class CheckpointRefused(TunelabError):
    status, code, title = 422, "checkpoint-refused", "Checkpoint path refused"


class IdempotencyConflict(TunelabError):
    status, code, title = 409, "idempotency-conflict", "Idempotency-Key reused with another body"


class BodyTooLarge(TunelabError):
    status, code, title = 413, "body-too-large", "Request body too large"


class RateLimited(TunelabError):
    status, code, title = 429, "rate-limited", "Too many requests"


class TooManyJobs(TunelabError):
    status, code, title = 429, "too-many-jobs", "Too many queued and running jobs"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:tunelab:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def json_path(location: tuple[str | int, ...] | list[str | int]) -> str:
    """('model', 'layers', 2, 'kernel_size') -> 'model.layers[2].kernel_size'."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(body)"


def _body_location(location: tuple[Any, ...], body: Any) -> tuple[str | int, ...]:
    """Drops the parts of a pydantic location that are not in the body: a discriminated
    union puts its tag (e.g. 'conv') between a list index and the field."""
    kept: list[str | int] = []
    node = body
    for part in location:
        if (
            isinstance(node, dict)
            and part not in node
            and part in (node.get("type"), node.get("name"))
        ):
            continue
        kept.append(part)
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(kept)


def _problem_entry(location: tuple[str | int, ...], message: str, code: str) -> dict[str, str]:
    return {"field": json_path(location), "message": message, "type": code}


def validation_problem(errors: list[dict[str, str]]) -> JSONResponse:
    fields = ", ".join(error["field"] for error in errors)
    return problem(
        422,
        "validation-error",
        "The request is not valid",
        f"{len(errors)} problem(s): {fields}",
        errors=errors,
    )


def spec_problems(problems: list[Problem]) -> list[dict[str, str]]:
    return [_problem_entry(p.location, p.message, p.code) for p in problems]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TunelabError)
    async def _domain(_request: Request, error: TunelabError) -> JSONResponse:
        return problem(
            error.status, error.code, error.title, error.detail, error.headers, **error.extensions
        )

    @app.exception_handler(SpecRejected)
    async def _spec(_request: Request, error: SpecRejected) -> JSONResponse:
        return validation_problem(spec_problems(error.problems))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        entries = []
        for item in error.errors():
            where, *rest = item["loc"] if item["loc"] else ("body",)
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "json_invalid":
                # The location is a character offset here, not a field.
                location: tuple[str | int, ...] = ()
                message = f"the body is not valid JSON (at character {rest[0] if rest else 0})"
            elif where == "body":
                location = _body_location(tuple(rest), error.body)
            else:
                location = (where, *rest)
            entries.append(_problem_entry(location, message, item["type"]))
        return validation_problem(entries)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}.get(
            error.status_code, "Error"
        )
        return problem(
            error.status_code,
            title.lower().replace(" ", "-"),
            title,
            str(error.detail),
            getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return problem(
            500,
            "internal-error",
            "Internal error",
            "The server failed to handle this request; it has been logged.",
        )


# What the OpenAPI document says about errors: every error is problem+json.
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
    429: "Too many requests or jobs; retry after `Retry-After` seconds",
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
