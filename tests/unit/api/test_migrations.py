from api.core.migrations import upgrade
from tests.schema_drift import schema_drift


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
