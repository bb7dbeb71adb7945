"""Dependencies shared by the routes, as annotated aliases."""

import hmac
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from api.artifact_store import ArtifactStore
from api.dispatch import Dispatcher
from api.errors import JobNotFound, StudyNotFound, Unauthorized
from api.keys import tenant_for_key
from api.models import Job, Study, Tenant
from api.rate_limit import Credential, RateLimiter
from shared.settings import Settings

bearer = HTTPBearer(auto_error=False, description="A tenant API key: `tunelab keys create`")


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


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_rate_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


def wake_scheduler(request: Request) -> None:
    """Asks this process's study scheduler for a pass now rather than at its next tick (it
    does nothing unless it holds the lease; without a lifespan there is none)."""
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake()


def client_address(request: Request) -> str:
    # The peer the server saw. Behind a proxy, run uvicorn with --proxy-headers and
    # --forwarded-allow-ips, or every client shares the proxy's address and its limit.
    return request.client.host if request.client else "unknown"


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
AddressDep = Annotated[str, Depends(client_address)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

# An address past its limit of failed authentications is refused outright, before its
# credentials are looked at: a flood of bad keys then costs no database query, and a key
# guessed right during the flood is refused like the wrong ones, so guessing gets nowhere.
# The price is that valid credentials from that address (users behind the attacker's NAT)
# are refused too, until a minute after the failures stop; most services make the same
# trade, and letting valid keys through would mean looking every key up again.


def _refuse(limiter: RateLimiter, credential: Credential, address: str, detail: str) -> NoReturn:
    limiter.count_failure(credential, address)
    raise Unauthorized(detail)


def current_tenant(
    session: SessionDep, limiter: RateLimiterDep, address: AddressDep, credentials: Credentials
) -> Tenant:
    limiter.refuse_failing_address("api-key", address)
    if credentials is None:
        _refuse(limiter, "api-key", address, "send your API key as `Authorization: Bearer <key>`")
    tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        _refuse(limiter, "api-key", address, "this API key is not valid or has been revoked")
    # Counted per key, by its visible prefix (tlk_<prefix>_<secret>), once it is known valid.
    limiter.count_request(credentials.credentials.split("_", 2)[1])
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def tenant_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Job:
    job = session.get(Job, job_id)
    # Another tenant's job is indistinguishable from one that does not exist.
    if job is None or job.tenant_id != tenant.id:
        raise JobNotFound(f"no job {job_id}")
    return job


JobDep = Annotated[Job, Depends(tenant_job)]


def tenant_study(study_id: str, session: SessionDep, tenant: TenantDep) -> Study:
    study = session.get(Study, study_id)
    if study is None or study.tenant_id != tenant.id:
        raise StudyNotFound(f"no study {study_id}")
    return study


StudyDep = Annotated[Study, Depends(tenant_study)]


def require_worker(request: Request) -> None:
    """Refuses a request without the workers' shared token (TUNELAB_WORKER_TOKEN). Called by
    WorkerRoute before anything else, so that no body is read for an unauthenticated caller."""
    settings = get_settings(request)
    limiter = get_rate_limiter(request)
    address = client_address(request)
    limiter.refuse_failing_address("worker-token", address)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.worker_token
    if (
        not expected
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(token.strip().encode(), expected.encode())
    ):
        _refuse(limiter, "worker-token", address, "worker routes need the worker token")


class WorkerRoute(APIRoute):
    """A worker route: the token is checked before the body is read or validated."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            require_worker(request)
            return await handle(request)

        return authenticated
