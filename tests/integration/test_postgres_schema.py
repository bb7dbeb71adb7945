import pytest

from api.core.migrations import upgrade
from tests.unit.api.test_migrations import schema_drift

pytestmark = pytest.mark.integration


def test_migrated_postgres_matches_the_models(postgres_url):
    upgrade(postgres_url)
    assert schema_drift(postgres_url) == []
