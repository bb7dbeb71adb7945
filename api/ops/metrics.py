"""The API's metrics for operators, in Prometheus' text format at GET /metrics.

- `tunelab_http_request_duration_seconds{route,method,status}`: each request, from its
  arrival until its response was sent in full, by route template (`/v1/jobs/{job_id}`, never
  the raw path, so the number of series stays bounded; "unmatched" for paths no route
  serves). An event stream is observed when it ends, with its whole length.
- `tunelab_attempts_started_total`: claims that started an attempt.
- `tunelab_leases_expired_total{outcome}`: attempts the sweep found with an expired lease;
  the job was `requeued`, or `failed` once it had lost max_attempts.
- `tunelab_epoch_seconds`, `tunelab_epoch_images_per_second`: what workers reported for each
  newly recorded epoch (a repeated post is not observed twice).
- `tunelab_jobs{status}`: jobs in each status, queued ones included, counted in the database
  at each scrape: every API process reports the same truth, whichever one is scraped.
- `tunelab_database_up`: 0 when that count failed (the other metrics are still served).

Tenants are never a label: their number is not bounded, and the metrics are not theirs.

The counters and histograms are created once per process, at import, and belong to no global
registry. Each app builds its own CollectorRegistry holding them and a collector bound to
its engine, so creating many apps in one process (the tests do) never registers a name
twice; the apps share the process's counts, as any code in one process would.

With several API processes, PROMETHEUS_MULTIPROC_DIR names a folder they share, set before
they start and emptied before the first one does. prometheus-client then keeps each
process's values in files there, and whichever process answers /metrics merges them all
(`multiprocess.MultiProcessCollector`); the job counts come from the database once, through
the answering process's collector, not once per process.
"""

import logging
import os
import time
from collections.abc import Iterable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth.deps import require_metrics_token
from api.ops.reads import job_counts_by_status
from api.web.error_handlers import HTTP_METHODS
from shared.messages import EpochMetrics

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# prometheus-client's own switch, read when it is imported: it cannot be a Tunelab setting.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"
# A client may send any token as its method; anything else is one label, not one per token.
OTHER_METHOD = "other"

REQUEST_SECONDS = Histogram(
    "tunelab_http_request_duration_seconds",
    "Requests, from arrival until the response was sent in full, by route template.",
    ["route", "method", "status"],
    registry=None,
)
ATTEMPTS_STARTED = Counter(
    "tunelab_attempts_started", "Attempts started by a successful claim.", registry=None
)
LeaseOutcome = Literal["requeued", "failed"]
LEASES_EXPIRED = Counter(
    "tunelab_leases_expired",
    "Attempts whose lease expired, by what became of the job: requeued, or failed.",
    ["outcome"],
    registry=None,
)
# An MNIST epoch takes seconds on a GPU and minutes on a few CPU cores.
EPOCH_SECONDS = Histogram(
    "tunelab_epoch_seconds",
    "Wall time of each newly recorded epoch, as its worker reported it.",
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
    registry=None,
)
EPOCH_IMAGES_PER_SECOND = Histogram(
    "tunelab_epoch_images_per_second",
    "Training throughput of each newly recorded epoch, as its worker reported it.",
    buckets=(100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000),
    registry=None,
)
API_METRICS: tuple[Collector, ...] = (
    REQUEST_SECONDS,
    ATTEMPTS_STARTED,
    LEASES_EXPIRED,
    EPOCH_SECONDS,
    EPOCH_IMAGES_PER_SECOND,
)
# Both outcomes are series from the start, so a rate over them is 0 rather than absent.
for _outcome in ("requeued", "failed"):
    LEASES_EXPIRED.labels(_outcome)


def attempt_started() -> None:
    ATTEMPTS_STARTED.inc()


def lease_expired(outcome: LeaseOutcome) -> None:
    LEASES_EXPIRED.labels(outcome).inc()


def epoch_recorded(metrics: EpochMetrics) -> None:
    """Observes an epoch the ledger has just recorded for the first time."""
    EPOCH_SECONDS.observe(metrics.epoch_seconds)
    EPOCH_IMAGES_PER_SECOND.observe(metrics.images_per_second)


class JobCounts(Collector):
    """`tunelab_jobs{status}` and `tunelab_database_up`, read from the ledger at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check names at registration without a query.
        return [self._jobs(), self._up(1)]

    def collect(self) -> Iterable[Metric]:
        try:
            with Session(self.engine) as session:
                counts = job_counts_by_status(session)
        except SQLAlchemyError as error:
            # The request metrics matter most while the database is down: serve them anyway.
            log.warning("/metrics could not count jobs: %s", error)
            return [self._up(0)]
        jobs = self._jobs()
        for status, count in counts.items():
            jobs.add_metric([status], count)
        return [jobs, self._up(1)]

    @staticmethod
    def _jobs() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tunelab_jobs", "Jobs in each status, counted in the database.", labels=["status"]
        )

    @staticmethod
    def _up(value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tunelab_database_up", "1 if the job counts could be read, else 0.", value=value
        )


def make_registry(engine: Engine) -> CollectorRegistry:
    """What one app's /metrics serves."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_ENV):
        # Every process's values, this one's included, merged from the shared folder at each
        # scrape. Per-process collectors (memory, CPU, GC) do not merge, so there are none.
        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (*API_METRICS, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    registry.register(JobCounts(engine))
    return registry


def route_template(scope: Scope, arrived: Scope) -> str:
    """The path template of the route that served the request: the one routing left in
    `scope`, else the first that matches the request as it arrived (`arrived`, a copy made
    before routing rewrote paths). That covers mounts, which leave no route, and requests
    refused before routing (a body too large, a NUL in the URL). Anything else, such as a
    route of an included router that exposes no template, is "unmatched"."""
    route: Any = scope.get("route")
    if route is None:
        route = _matching_route(arrived)
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else UNMATCHED


def _matching_route(scope: Scope) -> Any:
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route  # the path matched, not the method: a 405
    return partial


class RequestLatency:
    """Observes every HTTP request in REQUEST_SECONDS. Pure ASGI, so a streamed response (an
    event stream) passes through as it is sent, never buffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        arrived = dict(scope)
        # An error that escapes the app before it answers becomes a 500 further out.
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else OTHER_METHOD
            REQUEST_SECONDS.labels(route_template(scope, arrived), method, str(status)).observe(
                time.perf_counter() - started
            )


def install_metrics(app: FastAPI) -> None:
    """Adds the latency middleware and GET /metrics, which is not in the OpenAPI document:
    it is for operators, not tenants. Call it after the other middleware, so that requests
    they refuse are observed too."""
    registry = make_registry(app.state.engine)
    app.add_middleware(RequestLatency)

    # A plain def: the job counts are a blocking query, run in the thread pool.
    @app.get(METRICS_PATH, include_in_schema=False, dependencies=[Depends(require_metrics_token)])
    def metrics(request: Request) -> Response:
        """Prometheus' scrape: the text format, or OpenMetrics when the Accept header asks."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), media_type=content_type)
