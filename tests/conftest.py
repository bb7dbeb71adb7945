import pytest

from shared.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings for one test: an in-memory database and folders of its own."""
    return Settings(
        database_url="sqlite://",
        broker_url="memory://",
        broker_folder=tmp_path / "broker",
        data_dir=tmp_path / "data",
        artifact_dir=tmp_path / "artifacts",
        worker_token="test-worker-token",
    )
