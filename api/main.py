"""The FastAPI application."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from api.db import make_engine
from api.dispatch import CeleryDispatcher, Dispatcher
from api.errors import install_error_handlers
from api.routes import architectures, health, internal, jobs
from api.sweeper import Sweeper
from shared.settings import Settings, get_settings

DESCRIPTION = """Hyperparameter experiments on MNIST CNNs as training jobs.

Submit a job spec, poll the job, read its per-epoch metrics, download its checkpoints.
Every `/v1` route needs `Authorization: Bearer <api key>` (`tunelab keys create TENANT`)."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    sweeper = None
    if settings.sweep_seconds > 0:
        sweeper = Sweeper(
            app.state.engine,
            app.state.dispatcher,
            settings.max_attempts,
            settings.sweep_seconds,
            settings.redispatch_seconds,
        )
        sweeper.start()
    yield
    if sweeper is not None:
        sweeper.stop()


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="Tunelab", version="1.0.0", description=DESCRIPTION, lifespan=_lifespan)
    app.state.settings = settings
    app.state.engine = engine or make_engine(settings.database_url)
    app.state.dispatcher = dispatcher or CeleryDispatcher(settings)
    install_error_handlers(app)
    for module in (jobs, architectures, internal, health):
        app.include_router(module.router)
    logging.getLogger(__name__).info("Tunelab API ready")
    return app
