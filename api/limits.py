"""Limits that protect the service from any one client: the request body size, the bytes a
URL may carry, and the number of requests per minute an API key may make.

The body limit is ASGI middleware, so a large body is refused before a route, a dependency
or the JSON parser sees a byte of it. The rate limit counts per key in fixed one-minute
windows: in this process (the embedded default, one API process) or in Redis (shared by
every API process in production).
"""

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl

import redis
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import (
    BodyTooLarge,
    RateLimited,
    problem,
    validation_problem,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]

WINDOW_SECONDS = 60


class BodySizeLimit:
    """Refuses a request body over `max_bytes` with a 413: at once when its Content-Length
    says so, and otherwise as soon as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def receive_within_limit() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # To the app the client has gone: it stops reading, and whatever it
                    # answers is replaced by the 413 below.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_exceeded(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_unless_exceeded)
        except Exception:
            # An app that reads a cut-off body may fail in any way; the 413 is the answer.
            if not exceeded:
                raise
        if exceeded and not response_started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(f"the request body must be at most {self.max_bytes} bytes")
        # The rest of the body is never read, so the connection cannot be reused.
        response = problem(
            error.status, error.code, error.title, error.detail, headers={"Connection": "close"}
        )
        await response(scope, receive, send)


class NulInUrl:
    """Refuses a URL whose path or query holds a NUL byte (%00).

    No id, name or cursor contains one, and PostgreSQL cannot even compare text that
    does, so such a request would otherwise fail deep in a query. The path answers 404
    (it names nothing), a query parameter 422 (naming the parameter).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            response = problem(404, "not-found", "Not found", "no resource has a NUL in its URL")
            await response(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        bad = [name for name, value in parse_qsl(query, keep_blank_values=True) if "\x00" in value]
        if bad:
            response = validation_problem(
                [
                    {"field": f"query.{name}", "message": "must not contain NUL", "type": "nul"}
                    for name in bad
                ]
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RateLimiter(Protocol):
    limit: int

    def seconds_until_allowed(self, key: str) -> int:
        """Counts one request by `key`; 0 if it is allowed, else when to retry, in seconds."""
        ...

    def close(self) -> None: ...


def _window(now: float) -> tuple[int, int]:
    """The current window's number and the whole seconds left in it (at least 1)."""
    window = int(now // WINDOW_SECONDS)
    left = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
    return window, left


class InProcessRateLimiter:
    """Counts in this process: right for one API process, the embedded default."""

    def __init__(self, limit: int, clock: Clock = time.time) -> None:
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._window = -1
        self._counts: dict[str, int] = {}

    def seconds_until_allowed(self, key: str) -> int:
        window, left = _window(self.clock())
        with self._lock:
            if window != self._window:
                # Only the current window is kept, so memory stays bounded by the live keys.
                self._window, self._counts = window, {}
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
        return 0 if count <= self.limit else left

    def close(self) -> None:
        pass


class RedisRateLimiter:
    """Counts in Redis, so every API process shares one count per key.

    If Redis cannot be reached the request is allowed (and logged): losing the limit for a
    while is better than refusing every client. Redis is then left alone for
    `retry_seconds`, so an outage does not add a connection timeout to every request.
    """

    def __init__(
        self,
        url: str,
        limit: int,
        prefix: str = "tunelab:rate:",
        clock: Clock = time.time,
        timeout_seconds: float = 0.5,
        retry_seconds: float = 5.0,
    ) -> None:
        self.limit = limit
        self.prefix = prefix
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_seconds, socket_timeout=timeout_seconds
        )
        self._unreachable_until = 0.0

    def seconds_until_allowed(self, key: str) -> int:
        if time.monotonic() < self._unreachable_until:
            return 0
        window, left = _window(self.clock())
        counter = f"{self.prefix}{key}:{window}"
        try:
            pipeline = self.client.pipeline(transaction=True)
            pipeline.incr(counter)
            # A little past the window's end, then Redis forgets the counter by itself.
            pipeline.expire(counter, WINDOW_SECONDS + 1)
            count = int(pipeline.execute()[0])
        except redis.RedisError as error:
            self._unreachable_until = time.monotonic() + self.retry_seconds
            log.warning(
                "rate limit not enforced for %.0f s: Redis unreachable (%s)",
                self.retry_seconds,
                error,
            )
            return 0
        return 0 if count <= self.limit else left

    def close(self) -> None:
        self.client.close()


def make_rate_limiter(settings: Settings) -> RateLimiter:
    if settings.rate_limit_url:
        return RedisRateLimiter(settings.rate_limit_url, settings.requests_per_minute)
    return InProcessRateLimiter(settings.requests_per_minute)


def enforce_rate_limit(limiter: RateLimiter, key: str) -> None:
    retry_after = limiter.seconds_until_allowed(key)
    if retry_after:
        raise RateLimited(
            f"at most {limiter.limit} requests a minute per API key; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
