"""Integration fixtures: real Tunelab processes, on the machine's PostgreSQL and Redis
(tests/conftest.py's postgres_url and redis_queue) or on the embedded default.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.stack import Stack
from testbed.synthetic_mnist import write_synthetic_mnist


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
