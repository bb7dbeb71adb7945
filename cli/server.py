"""The server commands: the API, a worker, the embedded dev stack, migrations, tenant keys and
the training data. Each imports the api or the worker inside itself, so `tunelab api` never
loads torch."""

import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli import dev as dev_supervisor
from cli.errors import CommandFailed
from cli.settings import SettingsProblem, load_settings, require
from shared.settings import Settings

db_app = typer.Typer(help="database migrations", no_args_is_help=True)
keys_app = typer.Typer(help="tenant API keys", no_args_is_help=True)
data_app = typer.Typer(help="training data", no_args_is_help=True)

Host = Annotated[str, typer.Option()]
Port = Annotated[int, typer.Option()]


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def check_database(settings: Settings) -> None:
    """One clear line, not a traceback, when the database is unreachable or not migrated."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from api.core.db import make_engine
    from api.core.migrations import alembic_config

    url = _redacted(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as error:
        reason = str(error.orig if hasattr(error, "orig") else error).strip().splitlines()[0]
        raise SettingsProblem(f"cannot reach the database at {url}: {reason}") from None
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    if current != head:
        raise SettingsProblem(
            f"the database at {url} is not at the newest schema; run `tunelab db upgrade`"
        )


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
    from cli.api_server import serve

    _logging()
    serve(settings, host, port, workers, LOG_FORMAT)


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="training processes")] = 1,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="one worker per GPU, each seeing only its own: `all`, or indices such as 0,1"
        ),
    ] = None,
) -> None:
    """Run a training worker."""
    settings = load_settings()
    require(settings, "worker_token")
    devices = _devices(gpus, concurrency) if gpus is not None else None
    _logging()
    from worker.mnist_files import ensure_mnist

    # Done here, before the pool forks (or the workers per GPU start), so each training
    # process finds the files ready.
    ensure_mnist(settings.data_dir)
    if devices is not None:
        from cli import gpu_workers

        raise typer.Exit(gpu_workers.run(devices, settings.worker_name or socket.gethostname()))
    from shared.broker import make_broker_folders
    from worker.celery_app import app

    make_broker_folders(settings)
    argv = [
        "worker",
        "--loglevel=INFO",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        "-Q",
        settings.queue,
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.worker_name:
        argv += ["-n", settings.worker_name]
    app.worker_main(argv)


def _devices(gpus: str, concurrency: int) -> list[str]:
    from cli import gpu_workers

    if concurrency != 1:
        raise typer.BadParameter(
            "one training process per GPU: leave --concurrency out", param_hint="--concurrency"
        )
    try:
        chosen = gpu_workers.parse_gpus(gpus)
        return gpu_workers.visible_devices() if chosen is None else chosen
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--gpus") from None
    except gpu_workers.NoDevices as error:
        raise CommandFailed(str(error)) from None


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


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    settings = load_settings()
    _make_sqlite_folder(settings)
    from api.core.migrations import upgrade

    upgrade(settings.database_url)
    print(f"database at head: {_redacted(settings.database_url)}")


def new_key(database_url: str, tenant_name: str) -> tuple[str, str, str]:
    """(tenant name, tenant id, plaintext key) for a new key; the tenant is made if new."""
    from sqlmodel import Session

    from api.auth.keys import create_key
    from api.core.db import make_engine

    with Session(make_engine(database_url)) as session:
        tenant, key = create_key(session, tenant_name)
        return tenant.name, tenant.id, key


@keys_app.command("create")
def keys_create(tenant: str) -> None:
    """Create a key (and the tenant if new)."""
    name, tenant_id, key = new_key(load_settings().database_url, tenant)
    print(f"tenant {name} ({tenant_id}); this key is shown once:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys by prefix."""
    from sqlmodel import Session

    from api.auth.keys import list_keys
    from api.core.db import make_engine

    with Session(make_engine(load_settings().database_url)) as session:
        for key, tenant in list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(f"{key.prefix}  {tenant.name:20}  created {key.created_at:%Y-%m-%d}  {state}")


@keys_app.command("revoke")
def keys_revoke(prefix: str) -> None:
    """Revoke a key by its prefix."""
    from sqlmodel import Session

    from api.auth.keys import revoke_key
    from api.core.db import make_engine

    with Session(make_engine(load_settings().database_url)) as session:
        if not revoke_key(session, prefix):
            print(f"no key with prefix {prefix}", file=sys.stderr)
            raise typer.Exit(1)
    print(f"key {prefix} revoked")


@data_app.command("prepare")
def data_prepare() -> None:
    """Download and check MNIST."""
    settings = load_settings()
    _logging()
    from worker.mnist_files import DataPreparationError, prepare_mnist

    try:
        folder = prepare_mnist(settings.data_dir)
    except DataPreparationError as error:
        raise CommandFailed(str(error)) from None
    print(f"MNIST ready and checked: {folder}")


def _make_sqlite_folder(settings: Settings) -> None:
    prefix = "sqlite:///"
    if settings.database_url.startswith(prefix) and settings.database_url != prefix + ":memory:":
        Path(settings.database_url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
