"""`tunelab`: the service's server commands and the client of its API.

The operator's commands (the API, the workers, the dev stack, the database, keys and data)
live in cli.operator; the commands that talk to the API over HTTP in cli.client. This module
only names them. A command imports the api or the worker only when it runs, so `tunelab api`
never loads torch.
A failure a user can act on is one line on stderr: a setting exits with 2, anything else
with 1.
"""

import sys
from collections.abc import Sequence
from types import SimpleNamespace

import typer

# Typer vendors Click (since 0.2x): its errors are typer._click's, not the click package's.
from typer._click import ClickException
from typer.core import TyperGroup

from cli.client import jobs, studies
from cli.client.job_watch import EXIT_HELP
from cli.errors import CommandFailed
from cli.operator import (
    api_command,
    data_commands,
    db_commands,
    dev_command,
    keys_commands,
    worker_command,
)

app = typer.Typer(
    name="tunelab",
    help=__doc__.splitlines()[0] if __doc__ else None,
    no_args_is_help=True,
    add_completion=False,
    # Plain tracebacks: rich's would print local variables, the API key among them.
    pretty_exceptions_enable=False,
)
app.command("api")(api_command.api)
app.command("worker")(worker_command.worker)
app.command("dev")(dev_command.dev)
app.add_typer(db_commands.db_app, name="db")
app.add_typer(keys_commands.keys_app, name="keys")
app.add_typer(data_commands.data_app, name="data")
app.command("submit", epilog=f"With --watch: {EXIT_HELP}")(jobs.submit)
app.command("watch", epilog=EXIT_HELP)(jobs.watch)
app.command("jobs")(jobs.jobs)
app.command("show")(jobs.show)
app.command("cancel")(jobs.cancel)
app.command("delete")(jobs.delete)
app.command("download")(jobs.download)
app.command("plot")(jobs.plot)
app.command("compare")(jobs.compare)
app.command("predict")(jobs.predict)
app.add_typer(studies.app, name="study")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; its exit status."""
    try:
        app(args=None if argv is None else list(argv), prog_name="tunelab")
    except CommandFailed as failure:
        print(f"tunelab: {failure.message}", file=sys.stderr)
        return failure.exit_code
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    return 0


def parse_args(argv: Sequence[str]) -> SimpleNamespace:
    """What `argv` asks for, without running it: `command` (the first word), `path` (the
    command words) and the command's parameters. A command line that does not parse exits
    with 2, as it does at the terminal."""
    command = typer.main.get_command(app)
    words = list(argv)
    path: list[str] = []
    while isinstance(command, TyperGroup):
        sub = command.commands.get(words[0]) if words else None
        if sub is None:
            asked = " ".join(["tunelab", *path, *words[:1]])
            print(f"tunelab: `{asked}` is not a command", file=sys.stderr)
            raise SystemExit(2)
        path.append(words.pop(0))
        command = sub
    try:
        context = command.make_context(" ".join(["tunelab", *path]), words)
    except ClickException as error:
        error.show()
        raise SystemExit(2) from None
    return SimpleNamespace(command=path[0], path=path, **context.params)


if __name__ == "__main__":
    sys.exit(main())
