import json

import sqlalchemy as sa
from alembic import command

from api.core.migrations import alembic_config, upgrade
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

    def test_a_study_stored_before_refit_goes_on_without_it(self, tmp_path):
        url = f"sqlite:///{tmp_path}/tunelab.db"
        config = alembic_config(url)
        command.upgrade(config, "deb2c616608b")
        engine = sa.create_engine(url)
        v1_confirm = {"top_k": 2, "seeds": 3}
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'a', '2026-12-01')"
                )
            )
            for study_id, confirm in (("stu_1", v1_confirm), ("stu_2", None)):
                spec = json.dumps({"space": {}, "confirm": confirm})
                connection.execute(
                    sa.text(
                        "INSERT INTO studies (id, tenant_id, status, spec, created_at, "
                        "sampler_state, importances_trials, scheduling_failures) VALUES "
                        "(:id, 'ten_1', 'running', :spec, '2026-12-01', '{}', 0, 0)"
                    ),
                    {"id": study_id, "spec": spec},
                )
        command.upgrade(config, "head")
        with engine.connect() as connection:
            stored = dict(connection.execute(sa.text("SELECT id, spec FROM studies")).all())
            warm = connection.execute(sa.text("SELECT warm_trials FROM studies")).scalars()
            assert [json.loads(trials) for trials in warm] == [[], []]
        assert json.loads(stored["stu_1"])["confirm"] == {**v1_confirm, "refit": False}
        assert json.loads(stored["stu_2"])["confirm"] is None
        command.downgrade(config, "deb2c616608b")
        with engine.connect() as connection:
            spec = connection.execute(sa.text("SELECT spec FROM studies WHERE id = 'stu_1'"))
            assert json.loads(spec.scalar_one())["confirm"] == v1_confirm
        engine.dispose()
