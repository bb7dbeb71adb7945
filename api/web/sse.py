"""Server-Sent Events streams that poll the ledger: framing, keep-alive, disconnects.

FastAPI's own `fastapi.sse.EventSourceResponse` (0.165) was weighed and does not fit:
its keep-alive interval is a private module constant (`_PING_INTERVAL`, 15 s), while ours
is a setting (TUNELAB_EVENTS_KEEPALIVE_SECONDS) that deployments and tests shorten; it
writes its own schema for the stream into the OpenAPI document, in place of the `oneOf`
per event that generated clients read (api-v1 fixes that document). Its keep-alive comment
(`: ping`) would also differ from the `: keep-alive` that clients have been told of.
"""

import asyncio
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from api.web.errors import TooManyStreams

POLL_SECONDS = 1.0
KEEPALIVE = ": keep-alive\n\n"
# How long a client waits before reconnecting after the stream drops.
RECONNECT = "retry: 2000\n\n"
# How long a client refused a stream waits before asking again (streams end with their job
# or study, or when a client goes away).
STREAM_RETRY_SECONDS = 5

Poll = Callable[[], tuple[list[str], bool]]


def frame(event: str, data: str, event_id: str) -> str:
    """One event; `data` is JSON, on one line."""
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


async def polled_stream(
    request: Request, poll: Poll, keepalive_seconds: float
) -> AsyncIterator[str]:
    """Frames from `poll` (new frames, and whether the stream has ended), once a second, with
    a comment whenever `keepalive_seconds` pass without an event."""
    yield RECONNECT
    quiet_since, ended = time.monotonic(), False
    while not ended and not await request.is_disconnected():
        # The database calls are blocking: keep them off the event loop.
        frames, ended = await run_in_threadpool(poll)
        for event in frames:
            yield event
        now = time.monotonic()
        if frames:
            quiet_since = now
        elif now - quiet_since >= keepalive_seconds:
            yield KEEPALIVE
            quiet_since = now
        if not ended:
            await asyncio.sleep(min(POLL_SECONDS, keepalive_seconds))


class StreamSlots:
    """The event streams each tenant holds open in this process.

    Counted per process, not in the database: a stream is served by the process it reached,
    which polls the database for it every second for as long as it stays open, so what one
    process can bear is what is limited. Behind N API processes a tenant may hold N times
    the limit.
    """

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        # Slots are taken on the event loop but may be given back by a finalizer, elsewhere.
        self._lock = threading.Lock()

    def take(self, tenant_id: str, limit: int) -> Callable[[], None]:
        """A slot for one more of the tenant's streams, or TooManyStreams; returns the call
        that gives it back (a second call does nothing)."""
        with self._lock:
            held = self._open[tenant_id]
            if held >= limit:
                raise TooManyStreams(
                    f"you have {held} event streams open and the limit is {limit}; close one, "
                    "or poll the resource instead",
                    headers={"Retry-After": str(STREAM_RETRY_SECONDS)},
                    open_streams=held,
                    limit=limit,
                )
            self._open[tenant_id] += 1
        given_back = threading.Event()

        def give_back() -> None:
            with self._lock:
                if given_back.is_set():
                    return
                given_back.set()
                self._open[tenant_id] -= 1
                if not self._open[tenant_id]:
                    del self._open[tenant_id]

        return give_back

    def held(self, tenant_id: str) -> int:
        with self._lock:
            return self._open[tenant_id]


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` that gives its slot back however it ends: the stream finished,
    the client went away, the server cut it, or it was never sent at all."""

    def __init__(self, content: AsyncIterator[str], give_back: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._give_back = give_back
        # A response that is never called (an error on the way out) still gives it back.
        weakref.finalize(self, give_back)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._give_back()


def event_stream(
    request: Request, tenant_id: str, poll: Poll, keepalive_seconds: float, limit: int
) -> EventStreamResponse:
    """The response that streams `poll`'s frames, in one of the tenant's stream slots of this
    process (TooManyStreams, a 429, when it holds `limit` already)."""
    slots: StreamSlots = request.app.state.stream_slots
    give_back = slots.take(tenant_id, limit)
    return EventStreamResponse(polled_stream(request, poll, keepalive_seconds), give_back)


def event_stream_response(description: str, events: Mapping[str, str]) -> dict[int | str, Any]:
    """The `responses=` entry of a stream whose events are `events` (each event's name, and
    the component schema of its data). In OpenAPI 3.1 an event stream's `schema` describes
    one event: its `event`, `id`, and `data`, a JSON text of the named schema."""
    one_of = [
        {
            "type": "object",
            "required": ["event", "data", "id"],
            "properties": {
                "event": {"const": name},
                "id": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": f"#/components/schemas/{schema}"},
                },
            },
        }
        for name, schema in events.items()
    ]
    return {
        200: {
            "description": description,
            "content": {"text/event-stream": {"schema": {"oneOf": one_of}}},
        }
    }


def document_event_data(openapi: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    """Adds the schemas of event data that no route returns as JSON to the document's
    components, in place."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas.setdefault(model.__name__, schema)
