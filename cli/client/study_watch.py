"""`tunelab study watch` (and `study create --watch`): a study followed through its
Server-Sent Events until it ends, a line per event.

A stream that drops (the API restarting) is opened again, up to WATCH_CONNECTIONS times; it
starts over, and what was already printed is not printed again.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cli.client.http_client import ApiClient, ApiUnreachable, study_path
from cli.client.server_events import ServerEvent
from cli.client.study_views import event_line, summary_line

WATCH_CONNECTIONS = 6


def print_events(
    study: Mapping[str, Any],
    events: Iterable[ServerEvent],
    out: Console,
    printed: set[tuple[Any, ...]],
) -> str | None:
    """Prints the events not yet `printed` (updated); the study's final status, or None when
    the stream ended without one."""
    introduced = {key[1] for key in printed}
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "status":
            return str(data.get("status"))
        key = (event.event, data.get("number"), data.get("epochs_completed"), data.get("state"))
        if key in printed:
            continue
        printed.add(key)
        line = event_line(study, event, introduce=data.get("number") not in introduced)
        if line is not None:
            introduced.add(data.get("number"))
            out.print(line, soft_wrap=True)
    return None


def follow(client: ApiClient, study_id: str, out: Console) -> int:
    """Follows the study's events until it ends: 0 when it succeeded, 1 otherwise."""
    study = client.get(study_path(study_id))
    printed: set[tuple[Any, ...]] = set()

    def reconnecting(_state: RetryCallState) -> None:
        out.print("tunelab: the event stream dropped; reconnecting", soft_wrap=True)

    retrying = Retrying(
        stop=stop_after_attempt(WATCH_CONNECTIONS),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception_type(ApiUnreachable),
        before_sleep=reconnecting,
        reraise=True,
    )
    status = None
    for attempt in retrying:
        with attempt:
            status = print_events(
                study, client.events(study_path(study_id, "events")), out, printed
            )
            if status is None:
                raise ApiUnreachable(f"the event stream of study {study_id} ended early")
    final = client.get(study_path(study_id))
    out.print(summary_line(final), soft_wrap=True)
    return 0 if status == "succeeded" and final["status"] == "succeeded" else 1
