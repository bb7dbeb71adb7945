"""Limits on what one request may carry, as ASGI middleware: the size of its body, and no NUL
byte in its URL. A large body is refused before a route, a dependency or the JSON parser
sees a byte of it. (The rate limits are in api.auth.rate_limit.)
"""

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.web.error_handlers import problem, validation_problem
from api.web.errors import BodyTooLarge


class BodySizeLimit:
    """Refuses a request body over `max_bytes` with a 413: at once when its Content-Length
    says so, and otherwise as soon as the streamed bytes pass the limit.

    `own_limits` are the (method, path pattern) of routes that stream their bodies and limit
    them themselves (a checkpoint upload): they are passed through untouched, so that their
    caller is authenticated before its declared size is even looked at."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        own_limits: Iterable[tuple[str, re.Pattern[str]]] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_limits = tuple(own_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._limits_itself(scope):
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

    def _limits_itself(self, scope: Scope) -> bool:
        # Matched as the router matches, on the path below the app's root path.
        path, root = scope["path"], scope.get("root_path", "")
        route_path = path[len(root) :] if root and path.startswith(root) else path
        return any(
            scope["method"] == method and pattern.fullmatch(route_path)
            for method, pattern in self.own_limits
        )

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
