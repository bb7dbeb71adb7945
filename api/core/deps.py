"""What every domain's routes take from the application: settings, a database session, the
dispatcher and the checkpoint store, as annotated aliases.

The dependencies that only read the app's state are `async def`: FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per dependency per request for a lookup."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from api.artifacts.store import ArtifactStore
from api.core.dispatch import Dispatcher
from shared.settings import Settings


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


def get_session(request: Request) -> Iterator[Session]:
    # Objects keep their values after a commit: a route that answers after the ledger
    # committed does not read back what was just written. Code that needs the database's
    # view after a compare-and-set refreshes explicitly.
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


async def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


async def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def wake_scheduler(request: Request) -> None:
    """Asks this process's study scheduler for a pass now rather than at its next tick (it
    does nothing unless it holds the lease; without a lifespan there is none)."""
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake()


def peer_address(request: Request) -> str:
    # The peer the server saw. Behind a proxy, run uvicorn with --proxy-headers and
    # --forwarded-allow-ips, or every client shares the proxy's address and its limit.
    return request.client.host if request.client else "unknown"


async def client_address(request: Request) -> str:
    return peer_address(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
AddressDep = Annotated[str, Depends(client_address)]
