"""The concurrent-jobs limit holds under races: simultaneous submissions from one tenant,
through a live API on PostgreSQL and on the embedded SQLite, each on its own connection."""

import threading
from pathlib import Path

import httpx
import pytest

from testbed.stack import Stack
from tests.figures import figure

pytestmark = pytest.mark.integration

LIMIT = 3
SUBMISSIONS = 10


def simultaneous_submissions(stack: Stack, key: str, count: int) -> list[int]:
    """`count` POSTs released together by a barrier, one thread and connection each."""
    barrier = threading.Barrier(count)
    statuses: list[int] = []
    lock = threading.Lock()

    def submit(number: int) -> None:
        with httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            client.get("/healthz")  # connected before the race starts
            barrier.wait(timeout=30)
            status = client.post("/v1/jobs", json={"name": f"race-{number}"}).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses


@pytest.fixture(params=["postgresql", "sqlite"])
def api_only(request: pytest.FixtureRequest, tmp_path: Path) -> Stack:
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_url")
    else:
        database_url = f"sqlite:///{tmp_path}/tunelab.db"
    stack = Stack(
        tmp_path,
        database_url,
        "filesystem://",
        "training",
        extra_env={"TUNELAB_MAX_CONCURRENT_JOBS": str(LIMIT)},
    )
    request.addfinalizer(stack.stop)
    stack.tunelab("db", "upgrade")
    # No worker: every accepted job stays queued, so each one holds a slot.
    stack.start_api()
    return stack


def test_simultaneous_submissions_at_the_limit_accept_exactly_the_limit(api_only: Stack):
    key = api_only.create_key("racer")
    statuses = simultaneous_submissions(api_only, key, SUBMISSIONS)
    accepted = statuses.count(201)
    database = api_only.database_url.split(":", 1)[0].split("+")[0]
    figure(
        f"[limits] {database}: {SUBMISSIONS} simultaneous submissions with a limit of {LIMIT}: "
        f"{accepted} accepted, {statuses.count(429)} answered 429, "
        f"{sum(s >= 500 for s in statuses)} 5xx"
    )
    assert len(statuses) == SUBMISSIONS
    assert accepted == LIMIT
    assert statuses.count(429) == SUBMISSIONS - LIMIT
    with httpx.Client(
        base_url=api_only.api_url, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        assert len(client.get("/v1/jobs", params={"limit": 100}).json()["items"]) == LIMIT
