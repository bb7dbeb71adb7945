"""Integration fixtures: real PostgreSQL and Redis on this machine, real Tunelab processes.

Outside CI a missing service skips these tests; with CI set, it fails them.
"""

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
import redis

from testbed.services import POSTGRES_ADMIN, REDIS_URL, fresh_database, fresh_queue
from testbed.stack import Stack
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.availability import unavailable


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


def _started(stack: Stack) -> Iterator[Stack]:
    write_synthetic_mnist(stack.workdir / "data", train=2000, test=500)
    try:
        # The worker needs neither the schema nor the API to start, only to take a job.
        worker = stack.start_worker(wait=False)
        stack.tunelab("db", "upgrade")
        stack.start_api()
        stack.wait_for_worker(worker)
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop(kill_workers=True)


@pytest.fixture
def production_stack(
    tmp_path: Path, postgres_url: str, redis_queue: tuple[str, str]
) -> Iterator[Stack]:
    """PostgreSQL, Redis, uvicorn and a Celery worker process."""
    broker_url, queue = redis_queue
    yield from _started(Stack(tmp_path, postgres_url, broker_url, queue))


@pytest.fixture
def embedded_stack(tmp_path: Path) -> Iterator[Stack]:
    """The embedded default: SQLite and the filesystem broker, no servers at all."""
    yield from _started(
        Stack(tmp_path, f"sqlite:///{tmp_path}/tunelab.db", "filesystem://", "training")
    )


@pytest.fixture(scope="module")
def module_embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded default, shared by a module's tests that only read from it or keep to
    their own jobs: one start-up instead of one per test."""
    folder = tmp_path_factory.mktemp("stack")
    yield from _started(
        Stack(folder, f"sqlite:///{folder}/tunelab.db", "filesystem://", "training")
    )


@pytest.fixture(params=["production", "embedded"])
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")
