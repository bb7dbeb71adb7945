"""The FastAPI application."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from api.architectures import routes as architectures
from api.artifacts.from_settings import store_from_settings
from api.artifacts.store import ArtifactStore
from api.auth.rate_limit import RateLimiter, make_rate_limiter
from api.core.db import make_engine
from api.core.dispatch import CeleryDispatcher, Dispatcher
from api.jobs import routes as jobs
from api.jobs.events import StatusEvent
from api.jobs.sweeper import Sweeper
from api.ops import health
from api.ops.metrics import install_metrics
from api.studies import routes as studies
from api.studies.events import StudyStatusEvent
from api.studies.scheduler import StudyScheduler
from api.web.docs_pages import install_docs
from api.web.error_handlers import install_error_handlers
from api.web.limits import BodySizeLimit, NulInUrl
from api.web.problem_docs import document_problems
from api.web.schema_limits import document_limits
from api.web.sse import StreamSlots, document_event_data
from api.workers import routes as internal
from api.workers.uploads import remove_abandoned_uploads
from shared.messages import BatchProgress
from shared.settings import Settings, get_settings

DESCRIPTION = """Hyperparameter experiments on MNIST CNNs as training jobs.

Submit a job spec, poll the job, read its per-epoch metrics, download its checkpoints; or
submit a study, a search over job specs whose trials Tunelab samples, runs and prunes.
Every `/v1` route needs `Authorization: Bearer <api key>` (`tunelab keys create TENANT`)."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    remove_abandoned_uploads(app.state.store.staging_dir)
    sweeper = None
    if settings.sweep_seconds > 0:
        sweeper = Sweeper(app.state.engine, app.state.dispatcher, settings)
        sweeper.start()
    scheduler = StudyScheduler(app.state.engine, app.state.dispatcher, settings)
    app.state.scheduler = scheduler
    scheduler.start()
    yield
    scheduler.stop()
    if sweeper is not None:
        sweeper.stop()
    app.state.rate_limiter.close()


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    dispatcher: Dispatcher | None = None,
    rate_limiter: RateLimiter | None = None,
    store: ArtifactStore | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Tunelab",
        version=version("tunelab"),
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine or make_engine(settings.database_url)
    app.state.dispatcher = dispatcher or CeleryDispatcher(settings)
    app.state.rate_limiter = rate_limiter or make_rate_limiter(settings)
    app.state.store = store or store_from_settings(settings)
    app.state.stream_slots = StreamSlots()
    app.add_middleware(NulInUrl)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_request_bytes, own_limits=internal.OWN_BODY_LIMITS
    )
    install_metrics(app)
    install_error_handlers(app)
    for module in (jobs, studies, architectures, health):
        app.include_router(module.router)
    # Not in /openapi.json: workers are Tunelab's own, and a client generated from the public
    # document has no use for them (api.workers.document documents them).
    app.include_router(internal.router, include_in_schema=False)
    _document_problems(app)
    install_docs(app)
    logging.getLogger(__name__).info("Tunelab API ready")
    return app


def _document_problems(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = document_limits(document_problems(generate()), app.state.settings)
            document_event_data(document, [StatusEvent, BatchProgress, StudyStatusEvent])
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
