"""Server-Sent Events as the client commands read them (`tunelab watch`, `tunelab study watch`):
the stream's lines parsed by httpx-sse, each event's data decoded from JSON where it is JSON.

An event's `id` is the stream's last `id:` so far, as the SSE standard has it: an id holds for
the events after it until another replaces it, and a reconnection sends it back as
Last-Event-ID. Comments (the API's keep-alives) and frames without data (its `retry:`) are no
events.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

# The line decoder behind httpx-sse's EventSource, which itself wants an httpx.Response and
# its content type: these lines may also be a body already read (the API's tests).
from httpx_sse._decoders import SSEDecoder


@dataclass(frozen=True)
class ServerEvent:
    event: str
    data: Any
    # The stream's last `id:` so far, which a reconnection sends back as Last-Event-ID.
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """The events in a stream's lines, each dispatched at the blank line after it."""
    decoder = SSEDecoder()
    # A last blank line: an event the server ended the stream on without one still counts.
    for line in chain(lines, [""]):
        frame = decoder.decode(line)
        # httpx-sse also dispatches a frame without data once an id was seen (a keep-alive
        # comment's blank line, a `retry:`); the API sends no event without data.
        if frame is not None and frame.data:
            yield ServerEvent(frame.event, _decoded(frame.data), frame.id or None)


def _decoded(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data
