"""Who is calling: a tenant by its API key, a worker by the workers' token, Prometheus by the
metrics token. Every failed attempt counts against the caller's address.

An address past its limit of failed authentications is refused outright, before its
credentials are looked at: a flood of bad keys then costs no database query, and a key
guessed right during the flood is refused like the wrong ones, so guessing gets nowhere.
The price is that valid credentials from that address (users behind the attacker's NAT)
are refused too, until a minute after the failures stop; most services make the same
trade, and letting valid keys through would mean looking every key up again.
"""

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from api.auth.keys import tenant_for_key
from api.auth.rate_limit import Credential, RateLimiter
from api.core.deps import AddressDep, SessionDep, peer_address, settings_of
from api.core.models import Tenant
from api.web.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="A tenant API key: `tunelab keys create`")


async def get_rate_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


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


def _require_token(request: Request, credential: Credential, expected: str, detail: str) -> None:
    """Refuses a request whose bearer token is not `expected` (compared in constant time);
    an empty `expected` refuses everyone."""
    limiter: RateLimiter = request.app.state.rate_limiter
    address = peer_address(request)
    limiter.refuse_failing_address(credential, address)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if (
        not expected
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(token.strip().encode(), expected.encode())
    ):
        _refuse(limiter, credential, address, detail)


def require_worker(request: Request) -> None:
    """Refuses a request without the workers' shared token (TUNELAB_WORKER_TOKEN). Called by
    WorkerRoute before anything else, so that no body is read for an unauthenticated caller."""
    expected = settings_of(request).worker_token
    _require_token(request, "worker-token", expected, "worker routes need the worker token")


def require_metrics_token(request: Request) -> None:
    """Refuses a scrape without the metrics token; tenants' keys and the workers' token are
    refused like any other wrong token."""
    expected = settings_of(request).metrics_token
    if not expected:
        # Off unless configured, and then indistinguishable from a path that names nothing.
        raise HTTPException(404)
    # Guessing the token is limited like guessing keys, counted apart from them.
    _require_token(
        request,
        "metrics-token",
        expected,
        "/metrics needs the metrics token as `Authorization: Bearer <token>`",
    )


class WorkerRoute(APIRoute):
    """A worker route: the token is checked before the body is read or validated."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            require_worker(request)
            return await handle(request)

        return authenticated
