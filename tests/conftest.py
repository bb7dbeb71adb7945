from collections.abc import Iterator
from contextlib import ExitStack
from typing import NoReturn

import psycopg
import pytest
import redis

from shared.settings import Settings
from testbed.services import POSTGRES_ADMIN, REDIS_URL, fresh_database, fresh_queue
from tests.availability import unavailable
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


# The machine's PostgreSQL and Redis, shared by the integration and the fault tests: outside CI
# a missing service skips a test that needs it; with CI set, it fails it.
def _unavailable(service: str, error: Exception) -> NoReturn:
    unavailable(f"{service} is not reachable ({error})", "the integration tests")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with ExitStack() as cleanup:
        try:
            url = cleanup.enter_context(fresh_database(POSTGRES_ADMIN, "tunelab_it"))
        except psycopg.OperationalError as error:
            _unavailable("PostgreSQL", error)
        yield url


@pytest.fixture
def redis_queue() -> Iterator[tuple[str, str]]:
    """The machine's Redis and a queue name no one else uses; its keys are removed after."""
    with ExitStack() as cleanup:
        try:
            queue = cleanup.enter_context(fresh_queue(REDIS_URL, "tunelab-it"))
        except redis.RedisError as error:
            _unavailable("Redis", error)
        yield REDIS_URL, queue
