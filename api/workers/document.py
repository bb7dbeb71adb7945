"""The OpenAPI document of the worker routes, which the public one leaves out: for the
tests that fuzz them, and for anyone writing a worker of their own."""

from importlib.metadata import version
from typing import Any

from fastapi.openapi.utils import get_openapi

from api.web.problem_docs import document_problems
from api.workers import routes as internal

WORKER_TOKEN_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "The workers' shared token (TUNELAB_WORKER_TOKEN)",
}


def worker_document() -> dict[str, Any]:
    document = get_openapi(
        title="Tunelab worker routes",
        version=version("tunelab"),
        description="Claim a job, post its epochs and heartbeats, finish or hand it back.",
        routes=internal.router.routes,
    )
    components = document.setdefault("components", {})
    components["securitySchemes"] = {"WorkerToken": WORKER_TOKEN_SCHEME}
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["security"] = [{"WorkerToken": []}]
    return document_problems(document)
