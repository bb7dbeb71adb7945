"""`tunelab study …`: hyperparameter studies through the API, for people at a terminal (rich
tables) and for scripts (`S=$(tunelab study create s.json)`, `--json`, exit statuses)."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli.client.documents import AsJson, print_document, print_json, read_json
from cli.client.formatting import console
from cli.client.http_client import connect, job_path, study_path
from cli.client.study_views import (
    format_counts,
    is_multi_objective,
    objectives_of,
    study_view,
    trials_table,
)
from cli.client.study_watch import follow
from cli.errors import CommandFailed

app = typer.Typer(help="hyperparameter studies", no_args_is_help=True)


class Order(StrEnum):
    number = "number"
    value = "value"
    pareto = "pareto"


StudyId = Annotated[str, typer.Argument(metavar="ID", help="the study's id")]


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
    with connect() as client:
        study = client.create("/v1/studies", body, idempotency_key)
        print(study["id"], flush=True)
        if watch:
            # Progress on stderr, so stdout stays the id alone even with --watch.
            raise typer.Exit(follow(client, study["id"], console(stderr=True)))


@app.command("show")
def show(study_id: StudyId, as_json: AsJson = False) -> None:
    """One study: status, trial counts, best trial (or front), importances, confirmed."""
    with connect() as client:
        study = client.get(study_path(study_id))
    print_document(study, as_json, study_view)


@app.command("trials")
def trials(
    study_id: StudyId,
    order: Annotated[
        Order,
        typer.Option(
            help="`value`: the best first; `pareto`: the front first; `number`: in the "
            "order sampled"
        ),
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
            trial["job_id"]: client.get(job_path(trial["job_id"], "metrics"))["items"]
            for trial in listed
            if trial.get("job_id")
        }
    try:
        count = write_study(output, study, listed, metrics, overwrite=force)
    except FileExistsError:
        raise CommandFailed(f"{output} exists; pass --force to replace it") from None
    print(f"wrote study {study_name(study)} ({study['status']}, {count} trials) to {output}")
    print(f"open it with: optuna-dashboard {output}")


@app.command("plot")
def plot(
    study_id: StudyId,
    output: Annotated[
        Path, typer.Option("-o", "--output", metavar="FILE.png", help="the image to write")
    ],
) -> None:
    """Draw a study of several objectives: accuracy against parameters, the front marked."""
    # matplotlib takes a moment to import: only this command pays for it.
    from cli.client.plots import plot_front

    with connect() as client:
        study = client.get(study_path(study_id))
        if not is_multi_objective(study):
            raise CommandFailed(
                f"study {study_id} has one objective: `study plot` draws the front of a study "
                "of several (plot its trials' jobs with `tunelab plot JOB...`)"
            )
        listed = client.get(study_path(study_id, "trials"), params={"order": "pareto"})["items"]
    front = study.get("pareto") or []
    title = f"study {study.get('name') or study_id}: front of {len(front)}"
    try:
        plot_front(objectives_of(study), listed, front, output, title)
    except ValueError as error:
        raise CommandFailed(f"study {study_id}: {error}") from None
    print(f"wrote {output}")
