"""Several API processes on one database: the dispatch sweep and the study scheduler each run
in one of them at a time, through their leases; when that process is killed, another takes
them over within the lease and a job whose worker died is still queued again. And
`tunelab api --workers 2` serves from two uvicorn processes that share their metrics."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from sqlmodel import Session, select

from api.core.db import make_engine
from api.core.models import SchedulerLease, as_utc, utcnow
from api.jobs.sweeper import LEASE_NAME as SWEEPER
from api.studies.scheduler import LEASE_NAME as SCHEDULER
from testbed.services import psycopg_url
from testbed.stack import Process, Stack, wait_until
from tests.figures import figure
from tests.integration.proc import children_of, command_line, environment_of

pytestmark = pytest.mark.integration

WORKER_TOKEN = "integration-worker-token"
METRICS_TOKEN = "integration-metrics-token"
# A short job lease (it is also how long a fresh API waits before expiring any) and quick
# loops, whose own leases then last their 10 s minimum.
LEASES = {
    "TUNELAB_LEASE_SECONDS": "3",
    "TUNELAB_SWEEP_SECONDS": "0.5",
    "TUNELAB_SCHEDULE_SECONDS": "0.5",
}
LOOP_LEASE_SECONDS = 10.0
JOB = {"name": "its-worker-dies", "epochs": 1, "data": {"train_subset": 256, "test_subset": 64}}


def holder_pid(holder: str) -> int:
    """Lease holders are named host-pid-object."""
    return int(holder.rsplit("-", 2)[1])


def live_holders(database_url: str) -> dict[str, int]:
    """Each lease held now, and the pid of its holder."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.exec(select(SchedulerLease)).all()
            now = utcnow()
            return {
                row.name: holder_pid(row.holder) for row in rows if as_utc(row.expires_at) > now
            }
    finally:
        engine.dispose()


def both_held(database_url: str) -> dict[str, int] | None:
    holders = live_holders(database_url)
    return holders if {SWEEPER, SCHEDULER} <= holders.keys() else None


def claim(api_url: str, job_id: str) -> int:
    """Claims the job as a worker that then dies without a word: its attempt number."""
    response = httpx.post(
        f"{api_url}/internal/v1/jobs/{job_id}/claim",
        json={"worker": "doomed-worker"},
        headers={"Authorization": f"Bearer {WORKER_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    attempt: int = response.json()["attempt"]
    return attempt


def lost_attempts(database_url: str, job_id: str) -> list[int]:
    with psycopg.connect(psycopg_url(database_url)) as db:
        rows = db.execute(
            "SELECT a.attempt FROM job_attempts a JOIN jobs j ON j.id = a.job_id "
            "WHERE a.job_id = %s AND a.outcome = 'lease_expired' AND j.status = 'queued' "
            "ORDER BY a.attempt",
            (job_id,),
        ).fetchall()
    return [attempt for (attempt,) in rows]


def requeue_lines(process: Process, job_id: str) -> int:
    return sum(
        1 for line in process.log().splitlines() if job_id in line and "lost its lease" in line
    )


def test_the_sweep_and_the_scheduler_run_in_one_process_and_move_when_it_is_killed(
    tmp_path: Path, postgres_url: str, redis_queue: tuple[str, str]
):
    broker_url, queue = redis_queue
    stacks = [
        Stack(tmp_path / name, postgres_url, broker_url, queue, extra_env=LEASES)
        for name in ("one", "two")
    ]
    for stack in stacks:
        stack.workdir.mkdir()
    try:
        stacks[0].tunelab("db", "upgrade")
        key = stacks[0].create_key()
        with ThreadPoolExecutor(2) as pool:
            apis = list(pool.map(lambda stack: stack.start_api(), stacks))
        by_pid = {api.popen.pid: (api, stack) for api, stack in zip(apis, stacks, strict=True)}

        holders = wait_until(lambda: both_held(postgres_url), 15, "both leases to be taken")
        assert set(holders.values()) <= by_pid.keys()
        for name, pid in holders.items():
            # Taken by one process and never by the other.
            for api, _ in by_pid.values():
                taken = f"{name} lease taken" in api.log()
                assert taken == (api.popen.pid == pid), (name, api.name, api.log()[-2000:])
        sweeping, sweeping_stack = by_pid[holders[SWEEPER]]
        (survivor, survivor_stack), *_ = (v for p, v in by_pid.items() if p != holders[SWEEPER])

        headers = {"Authorization": f"Bearer {key}"}
        job = httpx.post(f"{survivor_stack.api_url}/v1/jobs", json=JOB, headers=headers)
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        # Attempt 1's worker dies while both processes run: the sweeping one requeues it.
        assert claim(survivor_stack.api_url, job_id) == 1
        wait_until(lambda: lost_attempts(postgres_url, job_id) == [1], 15, "attempt 1 requeued")
        assert (requeue_lines(sweeping, job_id), requeue_lines(survivor, job_id)) == (1, 0)

        # Attempt 2's worker dies, and so does the sweeping process, with SIGKILL.
        assert claim(survivor_stack.api_url, job_id) == 2
        sweeping.kill()
        killed_at = time.monotonic()

        def taken_over() -> bool:
            return set(live_holders(postgres_url).items()) == {
                (SWEEPER, survivor.popen.pid),
                (SCHEDULER, survivor.popen.pid),
            }

        wait_until(taken_over, LOOP_LEASE_SECONDS + 5, "the survivor to hold both leases")
        takeover_seconds = time.monotonic() - killed_at
        wait_until(lambda: lost_attempts(postgres_url, job_id) == [1, 2], 10, "attempt 2 requeued")
        figure(
            f"[two API processes] sweeper holder killed → taken over in {takeover_seconds:.1f} s "
            f"(loop lease {LOOP_LEASE_SECONDS:.0f} s); the dead worker's job queued again"
        )
        assert takeover_seconds < LOOP_LEASE_SECONDS + 2
        assert requeue_lines(survivor, job_id) == 1
    except BaseException:
        print(*(stack.logs() for stack in stacks))
        raise
    finally:
        for stack in stacks:
            stack.stop()


def uvicorn_workers(parent: int) -> list[int]:
    """uvicorn's worker processes: the children multiprocessing spawned, not its tracker."""
    return [pid for pid in children_of(parent) if "spawn_main" in " ".join(command_line(pid))]


def requests_served(folder: Path, pid: int, scratch: Path) -> float:
    """GET /healthz requests that process `pid` served, read from its own metrics files."""
    scratch.mkdir(exist_ok=True)
    for old in scratch.iterdir():
        old.unlink()
    for path in folder.glob(f"*_{pid}.db"):
        shutil.copy(path, scratch / path.name)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(scratch))
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "tunelab_http_request_duration_seconds_count"
        and sample.labels.get("route") == "/healthz"
    )


def test_api_workers_2_serves_from_two_processes_that_share_metrics_and_leases(tmp_path: Path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TUNELAB_METRICS_TOKEN": METRICS_TOKEN, "TMPDIR": str(temp), **LEASES}
    database = f"sqlite:///{tmp_path}/tunelab.db"
    stack = Stack(tmp_path, database, "filesystem://", "training", extra_env=env)
    try:
        stack.tunelab("db", "upgrade")
        api = stack.start_api("--workers", "2")
        workers = wait_until(
            lambda: (found := uvicorn_workers(api.popen.pid)) and len(found) == 2 and found,
            10,
            "two uvicorn workers",
        )
        # The metrics folder `tunelab api` made, handed to both.
        folders = {environment_of(pid).get("PROMETHEUS_MULTIPROC_DIR") for pid in workers}
        assert len(folders) == 1
        folder = Path(str(folders.pop()))
        assert folder.parent == temp and folder.is_dir()

        # New connections, several at once: the kernel shares them out between the processes.
        with ThreadPoolExecutor(8) as pool:

            def burst() -> list[float] | None:
                answers = list(pool.map(lambda _: httpx.get(f"{stack.api_url}/healthz"), range(16)))
                assert all(answer.status_code == 200 for answer in answers)
                served = [requests_served(folder, pid, tmp_path / "scratch") for pid in workers]
                return served if all(count > 0 for count in served) else None

            served = wait_until(burst, 20, "both processes to serve requests", interval=0)
        # Either process answers /metrics for both.
        scrape = httpx.get(
            f"{stack.api_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert scrape.status_code == 200
        healthz = [
            float(line.rsplit(" ", 1)[1])
            for line in scrape.text.splitlines()
            if line.startswith("tunelab_http_request_duration_seconds_count")
            and 'route="/healthz"' in line
        ]
        assert healthz == [sum(served)]

        holders = wait_until(lambda: both_held(database), 15, "both leases to be taken")
        assert set(holders.values()) <= set(workers)

        stack.stop()  # SIGTERM: a clean shutdown gives the leases up and removes the folder
        assert api.popen.returncode == 0, api.log()[-3000:]
        assert live_holders(database) == {}
        assert not folder.exists()
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
