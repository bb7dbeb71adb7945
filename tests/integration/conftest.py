"""Integration fixtures: real PostgreSQL and Redis on this machine, real Tunelab processes.

Outside CI a missing service skips these tests; with CI set, it fails them.
"""

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.integration.stack import Stack
from tests.mnist_fixtures import write_synthetic_mnist

POSTGRES_ADMIN = os.environ.get(
    "TUNELAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TUNELAB_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _unavailable(service: str, error: Exception) -> None:
    message = f"{service} is not reachable ({error})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI needs it for the integration tests")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"tunelab_it_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        _unavailable("PostgreSQL", error)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_queue() -> Iterator[tuple[str, str]]:
    """The machine's Redis and a queue name no one else uses; its keys are removed after."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        _unavailable("Redis", error)
    queue = f"tunelab-it-{secrets.token_hex(4)}"
    yield REDIS_URL, queue
    for key in client.scan_iter(f"*{queue}*"):
        client.delete(key)
    client.close()


def _started(stack: Stack) -> Iterator[Stack]:
    write_synthetic_mnist(stack.workdir / "data", train=2000, test=500)
    try:
        stack.tunelab("db", "upgrade")
        stack.start_api()
        stack.start_worker()
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


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


@pytest.fixture(params=["production", "embedded"])
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")
