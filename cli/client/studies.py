"""`tunelab study …`: hyperparameter studies through the API, for people at a terminal (rich
tables) and for scripts (`S=$(tunelab study create s.json)`, `--json`, exit statuses)."""

from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cli.client.documents import print_json, read_json
from cli.client.formatting import console
from cli.client.http_client import ApiClient, ApiUnreachable, connect
from cli.client.server_events import ServerEvent
from cli.client.study_views import (
    event_line,
    format_counts,
    study_view,
    summary_line,
    trials_table,
)
from cli.errors import CommandFailed

app = typer.Typer(help="hyperparameter studies", no_args_is_help=True)

# A watch whose stream drops (the API restarting) reconnects this many times; the stream
# starts over, and what was already printed is not printed again.
WATCH_CONNECTIONS = 6


class Order(StrEnum):
    number = "number"
    value = "value"


StudyId = Annotated[str, typer.Argument(metavar="ID", help="the study's id")]
AsJson = Annotated[bool, typer.Option("--json", help="the API's JSON, for scripts")]


def study_path(study_id: str, *rest: str) -> str:
    return "/".join([f"/v1/studies/{quote(study_id, safe='')}", *rest])


# --- study watch ------------------------------------------------------------------------


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


# --- the commands -------------------------------------------------------------------------


@app.command("create")
def create(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.json", help="the study (`-` reads stdin)")
    ],
    watch: Annotated[
        bool, typer.Option("--watch", help="then follow it (on stderr) until it ends")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key and body create one study, never two")
    ] = None,
) -> None:
    """Create a study; prints only its id (`S=$(tunelab study create s.json)`)."""
    body = read_json(study_file)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    with connect() as client:
        study = client.post("/v1/studies", body, headers=headers)
        print(study["id"], flush=True)
        if watch:
            # Progress on stderr, so stdout stays the id alone even with --watch.
            raise typer.Exit(follow(client, study["id"], console(stderr=True)))


@app.command("show")
def show(study_id: StudyId, as_json: AsJson = False) -> None:
    """One study: status, trial counts, best trial, importances, confirmed ranking."""
    with connect() as client:
        study = client.get(study_path(study_id))
    if as_json:
        print_json(study)
    else:
        console().print(study_view(study))


@app.command("trials")
def trials(
    study_id: StudyId,
    order: Annotated[
        Order, typer.Option(help="`value`: the best first; `number`: in the order sampled")
    ] = Order.number,
    as_json: AsJson = False,
) -> None:
    """The leaderboard: every trial with its state, value, epochs, params and reason."""
    with connect() as client:
        listed = client.get(study_path(study_id, "trials"), params={"order": order.value})
        if as_json:
            print_json(listed)
            return
        study = client.get(study_path(study_id))
    if listed["items"]:
        console().print(trials_table(study, listed["items"]))
    else:
        print(f"study {study_id} has no trials yet")


@app.command("cancel")
def cancel(study_id: StudyId) -> None:
    """Cancel the study: its queued and running trials stop, no new one starts."""
    with connect() as client:
        study = client.post(study_path(study_id, "cancel"))
    print(f"study {study['id']} {study['status']}; trials {format_counts(study['trials'])}")


@app.command("watch")
def watch(study_id: StudyId) -> None:
    """Follow the study, a line per event; exit 0 when it succeeded, else 1."""
    with connect() as client:
        raise typer.Exit(follow(client, study_id, console()))


@app.command("export")
def export(
    study_id: StudyId,
    output: Annotated[
        Path,
        typer.Option("-o", "--output", metavar="FILE.db", help="the Optuna journal file to write"),
    ],
    force: Annotated[bool, typer.Option("--force", help="replace FILE.db if it exists")] = False,
) -> None:
    """Write the study as an Optuna journal file, which optuna-dashboard opens as it is."""
    if output.exists() and not force:
        raise CommandFailed(f"{output} exists; pass --force to replace it")
    # Optuna takes a second to import: only this command pays for it.
    from cli.client.optuna_export import study_name, write_study

    with connect() as client:
        study = client.get(study_path(study_id))
        listed = client.get(study_path(study_id, "trials"), params={"order": "number"})["items"]
        metrics = {
            trial["job_id"]: client.get(f"/v1/jobs/{quote(trial['job_id'], safe='')}/metrics")[
                "items"
            ]
            for trial in listed
            if trial.get("job_id")
        }
    try:
        count = write_study(output, study, listed, metrics, overwrite=force)
    except FileExistsError:
        raise CommandFailed(f"{output} exists; pass --force to replace it") from None
    print(f"wrote study {study_name(study)} ({study['status']}, {count} trials) to {output}")
    print(f"open it with: optuna-dashboard {output}")
