"""Fault-injection fixtures: PostgreSQL (a fresh database per test), a redis-server of the
test's own on a free port, the API under uvicorn and Celery workers, all real processes, with
the short leases of tests/faults/fast_stack.py.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.stack import Stack
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.faults.fast_stack import FAST_LEASES, TEST_IMAGES, TRAIN_IMAGES, StackFactory
from tests.faults.harness import Client, RedisServer, client_for


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def fault_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,
    own_redis: RedisServer,
) -> Iterator[StackFactory]:
    """Builds the stack a scenario asks for: settings, and how many workers."""
    stacks: list[Stack] = []
    clients: list[Client] = []

    def build(workers: int = 1, **settings: str) -> tuple[Stack, Client]:
        stack = Stack(
            tmp_path,
            postgres_url,
            own_redis.url,
            "training",
            extra_env={**FAST_LEASES, **settings},
        )
        stacks.append(stack)
        write_synthetic_mnist(tmp_path / "data", train=TRAIN_IMAGES, test=TEST_IMAGES)
        # Workers start (PyTorch's slow import) while the schema and the API come up.
        started = [stack.start_worker(f"worker-{index}", wait=False) for index in range(workers)]
        stack.tunelab("db", "upgrade")
        stack.start_api()
        for worker in started:
            stack.wait_for_worker(worker)
        clients.append(client_for(stack, stack.create_key()))
        return stack, clients[-1]

    try:
        yield build
    finally:
        if request.node.stash.get(FAILED, True):
            for stack in stacks:
                print(stack.logs())
        for client in clients:
            client.http.close()
        for stack in stacks:
            stack.stop()
