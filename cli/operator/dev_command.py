"""`tunelab dev`: the embedded default made ready (MNIST, the schema, a tenant key), then the
API and one worker run under cli.operator.dev_supervisor."""

import os
import secrets
from typing import Annotated

import typer

from cli.operator import dev_supervisor
from cli.operator.api_command import Host, Port
from cli.operator.data_commands import data_prepare
from cli.operator.db_commands import db_upgrade
from cli.operator.keys_commands import new_key
from cli.settings import load_settings


def dev(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    tenant: Annotated[str, typer.Option(help="the tenant of the printed key")] = "default",
) -> None:
    """API and one worker on the embedded default."""
    # The embedded default: SQLite, a filesystem broker, one API and one worker process.
    os.environ.setdefault("TUNELAB_WORKER_TOKEN", secrets.token_urlsafe(24))
    os.environ["TUNELAB_API_URL"] = f"http://127.0.0.1:{port}"
    settings = load_settings()
    data_prepare()
    db_upgrade()
    _, _, key = new_key(settings.database_url, tenant)
    code = dev_supervisor.run(host, port, key=key, tenant=tenant, database=settings.database_url)
    raise typer.Exit(code)
