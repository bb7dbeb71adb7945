"""Dependencies shared by the routes, as annotated aliases."""

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from api.dispatch import Dispatcher
from api.errors import JobNotFound, Unauthorized
from api.keys import tenant_for_key
from api.limits import RateLimiter, enforce_rate_limit
from api.models import Job, Tenant
from shared.settings import Settings

bearer = HTTPBearer(auto_error=False, description="A tenant API key: `tunelab keys create`")
worker_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="WorkerToken",
    description="The workers' shared token (TUNELAB_WORKER_TOKEN)",
)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    # Objects keep their values after a commit: a route that commits and then answers
    # does not read back what it just wrote. Code that needs the database's view after a
    # compare-and-set refreshes explicitly.
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
WorkerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(worker_bearer)]


def current_tenant(request: Request, session: SessionDep, credentials: Credentials) -> Tenant:
    if credentials is None:
        raise Unauthorized("send your API key as `Authorization: Bearer <key>`")
    tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise Unauthorized("this API key is not valid or has been revoked")
    # Counted per key, by its visible prefix (tlk_<prefix>_<secret>), once it is known valid.
    limiter: RateLimiter = request.app.state.rate_limiter
    enforce_rate_limit(limiter, credentials.credentials.split("_", 2)[1])
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def tenant_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Job:
    job = session.get(Job, job_id)
    # Another tenant's job is indistinguishable from one that does not exist.
    if job is None or job.tenant_id != tenant.id:
        raise JobNotFound(f"no job {job_id}")
    return job


JobDep = Annotated[Job, Depends(tenant_job)]


def require_worker(settings: SettingsDep, credentials: WorkerCredentials) -> None:
    expected = settings.worker_token
    if (
        not expected
        or credentials is None
        or not hmac.compare_digest(credentials.credentials.encode(), expected.encode())
    ):
        raise Unauthorized("worker routes need the worker token")


WorkerDep = Depends(require_worker)
