"""Server-Sent Events streams that poll the ledger: framing, keep-alive, disconnects.

FastAPI's own `fastapi.sse.EventSourceResponse` (0.165) was weighed and does not fit:
its keep-alive interval is a private module constant (`_PING_INTERVAL`, 15 s), while ours
is a setting (TUNELAB_EVENTS_KEEPALIVE_SECONDS) that deployments and tests shorten; it
writes its own schema for the stream into the OpenAPI document, in place of the `oneOf`
per event that generated clients read (api-v1 fixes that document). Its keep-alive comment
(`: ping`) would also differ from the `: keep-alive` that clients have been told of.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

POLL_SECONDS = 1.0
KEEPALIVE = ": keep-alive\n\n"
# How long a client waits before reconnecting after the stream drops.
RECONNECT = "retry: 2000\n\n"

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
