"""How far a migrated database is from the models, for the SQLite and the PostgreSQL schema
tests alike."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from api.core.db import make_engine


def schema_drift(database_url: str) -> list:
    """What the migrated database lacks or has beyond the models' tables."""
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        drift = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    return drift
