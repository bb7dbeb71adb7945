"""`tunelab api`: the HTTP API, served once its settings and its database check out. It
imports no part of the worker, so it never loads torch."""

from typing import Annotated

import typer

from cli.operator.db_commands import check_database
from cli.operator.logs import LOG_FORMAT, configure_logging
from cli.settings import load_settings, require

Host = Annotated[str, typer.Option()]
Port = Annotated[int, typer.Option()]


def api(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="API processes serving the port (uvicorn workers)")
    ] = 1,
) -> None:
    """Run the HTTP API."""
    settings = load_settings()
    require(settings, "worker_token")
    check_database(settings)
    from cli.operator.uvicorn_launcher import serve

    configure_logging()
    serve(settings, host, port, workers, LOG_FORMAT)
