"""The handlers that turn every error into an RFC 9457 problem+json answer: domain errors,
rejected specs, request validation, HTTP errors, and anything unexpected (a logged 500)."""

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.web.errors import TunelabError
from shared.checks import Problem, SpecRejected
from shared.protocol import problem_type

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# Maps whose keys are data, not field names (a study's search space is keyed by paths):
# their keys are always quoted, so `space["batch_size"]` reads like `space["optimizer.lr"]`.
DATA_KEYED = frozenset({("space",)})


def json_path(location: tuple[str | int, ...] | list[str | int]) -> str:
    """('model', 'layers', 2, 'kernel_size') -> 'model.layers[2].kernel_size'; a key that is
    not a plain name, or a key of a DATA_KEYED map, is quoted:
    ('space', 'optimizer.lr') -> 'space["optimizer.lr"]'."""
    path = ""
    for index, part in enumerate(location):
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.isidentifier() or tuple(location[:index]) in DATA_KEYED:
            path += f"[{json.dumps(part)}]"
        else:
            path += f".{part}" if path else part
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


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's own 405 names only the first
    route whose path matched (`POST` for /v1/jobs, though GET is served there too)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


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
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}.get(
            error.status_code, "Error"
        )
        headers = dict(getattr(error, "headers", None) or {})
        if error.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return problem(
            error.status_code,
            title.lower().replace(" ", "-"),
            title,
            str(error.detail),
            headers or None,
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
