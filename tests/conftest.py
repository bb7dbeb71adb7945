import pytest

from shared.settings import Settings
from tests.figures import FIGURES


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
