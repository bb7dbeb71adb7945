from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from api.core.db import make_engine
from api.core.migrations import upgrade


def schema_drift(database_url: str) -> list:
    """What the migrated database lacks or has beyond the models' tables."""
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        drift = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    return drift


class TestMigrations:
    def test_migrated_sqlite_matches_the_models(self, tmp_path):
        url = f"sqlite:///{tmp_path}/tunelab.db"
        upgrade(url)
        assert schema_drift(url) == []

    def test_upgrading_twice_changes_nothing(self, tmp_path):
        url = f"sqlite:///{tmp_path}/tunelab.db"
        upgrade(url)
        upgrade(url)
        assert schema_drift(url) == []
