from collections.abc import Iterator

import pytest

from shared.settings import Settings
from tests.figures import FIGURES
from tests.moto_server import S3Server, moto_s3


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings for one test: an in-memory database and folders of its own."""
    return Settings(
        database_url="sqlite://",
        broker_url="memory://",
        broker_folder=tmp_path / "broker",
        data_dir=tmp_path / "data",
        artifact_dir=tmp_path / "artifacts",
        worker_dir=tmp_path / "worker",
        worker_token="test-worker-token",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server, one process for the whole run; tests take a bucket each."""
    with moto_s3(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server
