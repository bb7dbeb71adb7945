"""make bench-api: how fast the API takes jobs, and how soon an idle worker starts one.

(1) POST /v1/jobs: N jobs from M concurrent clients, with no worker running, so the
    measure is the API alone: validation, the database, the broker publish. With
    `--api-workers 1 2` it runs against `tunelab api --workers 1`, then `--workers 2`, and
    prints the throughput and p50 of each against the first as ratios.
(2) submit-to-running: one idle worker; K tiny jobs, one at a time, each sent only once
    the worker is idle again. The latency is the job's `started_at` (stamped by the API
    when the worker claims it) minus the client's clock when it sent the POST; client,
    API and worker share this machine's clock.

Each part gets a deployment of its own, started for it and removed after it: on the
production shape a fresh PostgreSQL database and a Redis queue no one else uses, with
`--embedded` SQLite and the filesystem broker in a scratch folder. So the queued jobs of
part 1 are never trained by the worker of part 2, nor by anyone else's.
"""

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from shared.broker import TRAIN_TASK
from shared.settings import Settings
from testbed.services import POSTGRES_ADMIN, REDIS_URL, fresh_database, fresh_queue
from testbed.stack import Stack, wait_until
from testbed.synthetic_mnist import write_synthetic_mnist

P50_TARGET_MS = 10.0
SUBMIT_TO_RUNNING_TARGET_MS = 100.0
# Requests per client before the clock starts: connections opened, pools and caches warm.
WARMUP_POSTS_PER_CLIENT = 5
UNLIMITED = 1_000_000_000
FINISHED = {"succeeded", "failed", "cancelled"}
# Celery's own line once a task has ended, however it ended: from then on the worker (one
# process, prefetch 1) is waiting on the broker again.
TASK_ENDED = re.compile(rf"Task {re.escape(TRAIN_TASK)}\[[\w-]+\] (succeeded|raised|failed)")


def small_job(name: str) -> dict[str, Any]:
    """A valid job that trains in well under a second: one epoch of a few batches."""
    return {"name": name, "epochs": 1, "data": {"train_subset": 256, "test_subset": 100}}


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` quantile (0.01..0.99), interpolated between the closest ranks."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def parse_time(text: str) -> float:
    """An RFC 3339 time from the API as seconds since the epoch, like time.time()."""
    return datetime.fromisoformat(text).timestamp()


# --- deployments ---------------------------------------------------------------------


@contextmanager
def deployment(
    args: argparse.Namespace, part: str, worker: bool, api_workers: int = 1
) -> Iterator[Stack]:
    """The API in `api_workers` processes (and a worker if asked) on a backend of their own,
    stopped and removed after."""
    with ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{part}-")))
        if args.embedded:
            database_url, broker_url, queue = (
                f"sqlite:///{workdir}/tunelab.db",
                "filesystem://",
                "training",
            )
        else:
            database_url = cleanup.enter_context(fresh_database(args.postgres, "tunelab_bench"))
            broker_url, queue = (
                args.redis,
                cleanup.enter_context(fresh_queue(args.redis, "tunelab-bench")),
            )
        overrides = {
            # The production heartbeat, not the integration tests' fast one.
            "TUNELAB_HEARTBEAT_SECONDS": str(Settings.model_fields["heartbeat_seconds"].default),
            # One tenant posts hundreds of jobs that nobody trains: the per-tenant quotas
            # would refuse most of them, and the benchmark measures the API, not its quotas.
            "TUNELAB_MAX_CONCURRENT_JOBS": str(UNLIMITED),
            "TUNELAB_REQUESTS_PER_MINUTE": str(UNLIMITED),
        }
        if not args.embedded:
            # Production counts requests in Redis, shared by every API process.
            overrides["TUNELAB_RATE_LIMIT_URL"] = args.redis
        stack = Stack(workdir, database_url, broker_url, queue, extra_env=overrides)
        try:
            stack.tunelab("db", "upgrade")
            stack.start_api("--workers", str(api_workers))
            if worker:
                # Small MNIST-shaped files: the jobs only need to run, not to learn digits.
                write_synthetic_mnist(workdir / "data", train=1000, test=200)
                stack.start_worker()
            yield stack
        except BaseException:
            print(stack.logs(), file=sys.stderr)
            raise
        finally:
            # Before the database is dropped and the folder removed (ExitStack unwinds after).
            stack.stop()


def backend_name(args: argparse.Namespace) -> str:
    return "SQLite + filesystem broker" if args.embedded else "PostgreSQL + Redis"


# --- part 1: POST /v1/jobs ------------------------------------------------------------


@dataclass
class PostRun:
    clients: int
    api_workers: int = 1
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def jobs_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds


def post_jobs(api_url: str, key: str, jobs: int, clients: int, api_workers: int = 1) -> PostRun:
    """`jobs` POSTs shared among `clients` threads, each on one kept-alive connection."""
    start_together = threading.Barrier(clients)
    shares = [jobs // clients + (1 if index < jobs % clients else 0) for index in range(clients)]

    def one_client(count: int) -> tuple[list[float], float, float]:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=api_url, headers=headers, timeout=30) as client:

            def submit(name: str) -> float:
                started = time.perf_counter()
                response = client.post("/v1/jobs", json=small_job(name))
                elapsed = time.perf_counter() - started
                if response.status_code != 201:
                    raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text}")
                return elapsed * 1000

            for _ in range(WARMUP_POSTS_PER_CLIENT):
                submit("bench-api-warmup")
            start_together.wait(timeout=120)
            began = time.perf_counter()
            latencies = [submit("bench-api") for _ in range(count)]
            return latencies, began, time.perf_counter()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one_client, shares))
    run = PostRun(clients, api_workers)
    for latencies, _, _ in results:
        run.latencies_ms.extend(latencies)
    run.seconds = max(end for _, _, end in results) - min(began for _, began, _ in results)
    return run


def measure_posts(args: argparse.Namespace) -> list[PostRun]:
    runs = []
    for api_workers in args.api_workers:
        with deployment(
            args, f"post-{api_workers}", worker=False, api_workers=api_workers
        ) as stack:
            key = stack.create_key("bench")
            print(
                f"\nPOST /v1/jobs, {backend_name(args)}, {processes(api_workers)}, no worker: "
                "latency per request in ms",
                flush=True,
            )
            print(
                f"{'clients':>7} {'jobs':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
                f"{'jobs/s':>8}"
            )
            for clients in args.clients:
                run = post_jobs(stack.api_url, key, args.jobs, clients, api_workers)
                values = run.latencies_ms
                print(
                    f"{clients:>7} {len(values):>6} {percentile(values, 0.5):>7.1f} "
                    f"{percentile(values, 0.9):>7.1f} {percentile(values, 0.99):>7.1f} "
                    f"{max(values):>7.1f} {run.jobs_per_second:>8.0f}",
                    flush=True,
                )
                runs.append(run)
    return runs


def processes(api_workers: int) -> str:
    return f"{api_workers} API process{'es' if api_workers > 1 else ''}"


def scaling_lines(runs: list[PostRun]) -> list[str]:
    """For each number of clients, each API process count against the first: throughput and
    p50 as ratios (throughput x2 and p50 x0.5 would be perfect scaling from 1 to 2)."""
    lines = []
    for clients in dict.fromkeys(run.clients for run in runs):
        same = [run for run in runs if run.clients == clients]
        base = same[0]
        base_p50 = percentile(base.latencies_ms, 0.5)
        for run in same[1:]:
            p50 = percentile(run.latencies_ms, 0.5)
            speedup = run.jobs_per_second / base.jobs_per_second
            lines.append(
                f"  {clients} client{'s' if clients > 1 else ''}, {processes(run.api_workers)} "
                f"vs {base.api_workers}: throughput {run.jobs_per_second:.0f} vs "
                f"{base.jobs_per_second:.0f} jobs/s (x{speedup:.2f}), "
                f"p50 {p50:.1f} vs {base_p50:.1f} ms (x{p50 / base_p50:.2f})"
            )
    return lines


# --- part 2: submit to running ----------------------------------------------------------


@dataclass
class Submission:
    """One job's way from the client to a worker, in ms from the client's send."""

    post_ms: float  # the POST's round trip
    stored_ms: float  # the row's created_at
    running_ms: float  # the claim's started_at
    # How the job ended does not change when it started, but a run of failures is news.
    outcome: str


def tasks_ended(worker_log: str) -> int:
    return len(TASK_ENDED.findall(worker_log))


def submit_and_follow(client: httpx.Client, stack: Stack, ended_before: int) -> Submission:
    """Sends one job to the idle worker, waits until it has finished and the worker is idle."""
    sent_at = time.time()
    started = time.perf_counter()
    response = client.post("/v1/jobs", json=small_job("bench-api-running"))
    post_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text}")
    job_id = response.json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in FINISHED else None

    # The measure is read from the job's timestamps, so polling often only costs CPU
    # that the API and the worker would rather have.
    job = wait_until(finished, 60, f"job {job_id} to finish", interval=0.05)
    if job["started_at"] is None:
        raise RuntimeError(f"job {job_id} ended {job['status']} without starting: {job['error']}")
    worker = stack.processes[-1]
    wait_until(
        lambda: tasks_ended(worker.log()) > ended_before, 30, "the worker to be idle", interval=0.01
    )
    return Submission(
        post_ms=post_ms,
        stored_ms=(parse_time(job["created_at"]) - sent_at) * 1000,
        running_ms=(parse_time(job["started_at"]) - sent_at) * 1000,
        outcome=job["status"] if job["error"] is None else f"{job['status']} ({job['error']})",
    )


def measure_submit_to_running(args: argparse.Namespace) -> list[Submission]:
    with deployment(args, "running", worker=True) as stack:
        key = stack.create_key("bench")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as client:
            # The first job pays for the pool child's first task and the data loading.
            submit_and_follow(client, stack, ended_before=0)
            submissions = [
                submit_and_follow(client, stack, ended_before=1 + index)
                for index in range(args.running_jobs)
            ]
    print(
        f"\nsubmit-to-running, {backend_name(args)}, one idle worker, "
        f"{len(submissions)} jobs one at a time: ms from the client's send",
        flush=True,
    )
    print(f"{'':<34} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for label, values in (
        ("POST answered (round trip)", [s.post_ms for s in submissions]),
        ("job stored (created_at)", [s.stored_ms for s in submissions]),
        ("job claimed by the worker (started)", [s.running_ms for s in submissions]),
    ):
        print(
            f"{label:<34} {percentile(values, 0.5):>7.1f} {percentile(values, 0.9):>7.1f} "
            f"{percentile(values, 0.99):>7.1f} {max(values):>7.1f}"
        )
    outcomes = Counter(s.outcome for s in submissions)
    print("jobs ended: " + ", ".join(f"{count} {outcome}" for outcome, count in outcomes.items()))
    return submissions


# --- the run ---------------------------------------------------------------------------


def stop_on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def load_average() -> str:
    # Other work on the machine shows up in every latency here: say how busy it was.
    return f"load average {os.getloadavg()[0]:.1f}"


def verdict(value: float, target: float) -> str:
    return "target met" if value < target else f"target {target:.0f} ms missed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="POSTs per row of part 1")
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1, 8],
        help="concurrent clients, one row each (1 shows a request's own cost)",
    )
    parser.add_argument(
        "--api-workers",
        type=int,
        nargs="+",
        default=[1],
        help="API processes (`tunelab api --workers N`) for part 1, a deployment each; "
        "`1 2` compares one process with two",
    )
    parser.add_argument(
        "--running-jobs", type=int, default=20, help="jobs measured in part 2 (submit-to-running)"
    )
    parser.add_argument(
        "--embedded", action="store_true", help="SQLite and the filesystem broker instead"
    )
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, help="an admin URL: CREATE DATABASE")
    parser.add_argument("--redis", default=REDIS_URL)
    args = parser.parse_args()
    if args.jobs < max(args.clients) or min(args.clients) < 1 or args.running_jobs < 1:
        parser.error("need --jobs >= each --clients >= 1 and --running-jobs >= 1")
    if min(args.api_workers) < 1:
        parser.error("need --api-workers >= 1")

    # Ctrl-C or a SIGTERM unwinds through the finally blocks that stop the processes and drop
    # the database; set explicitly, since a shell starting us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop_on_signal)
    print(
        f"Tunelab API benchmark on {backend_name(args)}; "
        f"{len(os.sched_getaffinity(0))} cores shared by clients, API and worker; "
        f"{load_average()}",
        flush=True,
    )
    post_runs = measure_posts(args)
    submissions = measure_submit_to_running(args)

    print(f"\nsummary ({backend_name(args)}; {load_average()} at the end)")
    for run in post_runs:
        p50 = percentile(run.latencies_ms, 0.5)
        print(
            f"  POST /v1/jobs, {processes(run.api_workers)}: {len(run.latencies_ms)} jobs, "
            f"{run.clients} client{'s' if run.clients > 1 else ''}: p50 {p50:.1f} ms, "
            f"p99 {percentile(run.latencies_ms, 0.99):.1f} ms, "
            f"{run.jobs_per_second:.0f} jobs/s  ({verdict(p50, P50_TARGET_MS)})"
        )
    if len(args.api_workers) > 1:
        print("  scaling of POST /v1/jobs with API processes:")
        for line in scaling_lines(post_runs):
            print(line)
    running = [s.running_ms for s in submissions]
    p50 = percentile(running, 0.5)
    print(
        f"  submit-to-running (idle worker): {len(running)} jobs: p50 {p50:.0f} ms, "
        f"p99 {percentile(running, 0.99):.0f} ms, max {max(running):.0f} ms  "
        f"({verdict(p50, SUBMIT_TO_RUNNING_TARGET_MS)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
