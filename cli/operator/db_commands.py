"""`tunelab db`: the database's schema, migrated to the newest, and checked before the API
serves. The database is named by its URL with the password hidden, in every line printed."""

from pathlib import Path

import typer

from cli.settings import SettingsProblem, load_settings
from shared.settings import Settings

db_app = typer.Typer(help="database migrations", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    settings = load_settings()
    _make_sqlite_folder(settings)
    from api.core.migrations import upgrade

    upgrade(settings.database_url)
    print(f"database at head: {redacted(settings.database_url)}")


def check_database(settings: Settings) -> None:
    """One clear line, not a traceback, when the database is unreachable or not migrated."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from api.core.db import make_engine
    from api.core.migrations import alembic_config

    url = redacted(settings.database_url)
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


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _make_sqlite_folder(settings: Settings) -> None:
    prefix = "sqlite:///"
    if settings.database_url.startswith(prefix) and settings.database_url != prefix + ":memory:":
        Path(settings.database_url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)
