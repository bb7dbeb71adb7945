"""Fault-injection fixtures: PostgreSQL (a fresh database per test), a redis-server of the
test's own on a free port, the API under uvicorn and Celery workers, all real processes.

Leases, heartbeats and sweeps are short here so that a lost worker is noticed in seconds;
the mechanisms are the ones production runs with its longer defaults.
"""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.stack import Stack
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.faults.harness import Client, RedisServer, client_for
from tests.integration.conftest import postgres_url  # noqa: F401 - a fixture used here

# Enough images that an epoch lasts a few seconds on one thread: long enough to be killed
# in the middle of.
TRAIN_IMAGES = 6000
TEST_IMAGES = 500

FAST_LEASES = {
    "TUNELAB_LEASE_SECONDS": "6",
    "TUNELAB_HEARTBEAT_SECONDS": "1",
    "TUNELAB_SWEEP_SECONDS": "1",
    "TUNELAB_REDISPATCH_SECONDS": "5",
    "TUNELAB_MAX_ATTEMPTS": "5",
    "TUNELAB_HANDBACK_GRACE_SECONDS": "0",
    # One thread per training process: runs are reproducible and two workers share 2 cores.
    "TUNELAB_TORCH_THREADS": "1",
}


def job_spec(epochs: int, seed: int = 7, **fields: object) -> dict[str, object]:
    return {
        "epochs": epochs,
        "seed": seed,
        "data": {"train_subset": TRAIN_IMAGES, "test_subset": TEST_IMAGES},
        **fields,
    }


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


StackFactory = Callable[..., tuple[Stack, Client]]


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
    postgres_url: str,  # noqa: F811 - the fixture imported above
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
