"""Liveness and readiness; no key needed."""

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.core.deps import DispatcherDep, SessionDep
from api.ops.reads import ping_database

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz", operation_id="healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz", operation_id="readyz", response_model=Health, responses={503: {"model": Health}}
)
def readyz(session: SessionDep, dispatcher: DispatcherDep) -> Health | JSONResponse:
    """Ready to take jobs: the database and the broker both answer."""
    checks: dict[str, str] = {}
    try:
        ping_database(session)
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unavailable: {type(error).__name__}"
    try:
        dispatcher.ping()
        checks["broker"] = "ok"
    except Exception as error:  # noqa: BLE001
        checks["broker"] = f"unavailable: {type(error).__name__}"
    health = Health(
        status="ok" if all(v == "ok" for v in checks.values()) else "unavailable", checks=checks
    )
    if health.status != "ok":
        return JSONResponse(health.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    return health
