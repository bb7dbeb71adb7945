import pytest

from api.core.migrations import upgrade
from tests.schema_drift import schema_drift

pytestmark = pytest.mark.integration


def test_migrated_postgres_matches_the_models(postgres_url):
    upgrade(postgres_url)
    assert schema_drift(postgres_url) == []
