"""Fault injection: what production does to jobs, done to real processes.

Each scenario prints `submitted N / succeeded N / lost 0 / duplicated 0` (run with -s to
see it) and asserts it, reading the ledger straight from PostgreSQL: lost means a job that
did not end as it should or misses an epoch's metrics; duplicated means two metrics rows
for one epoch, or a row from an attempt that a later attempt had already replaced.
"""

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
import pytest

from shared.settings import Settings
from testbed.services import psycopg_url
from testbed.stack import Process, free_port, wait_until
from tests.faults.fast_stack import StackFactory, job_spec
from tests.faults.harness import (
    RedisServer,
    audit,
    audits,
    kill,
    tally,
    training_pid,
)
from tests.figures import figure

pytestmark = pytest.mark.integration

METRICS_COMPARED = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr")


def metric_rows(client_http: httpx.Client, job_id: str) -> list[dict[str, float]]:
    items: list[dict[str, float]] = client_http.get(f"/v1/jobs/{job_id}/metrics").json()["items"]
    return items


def wait_for_log(process: Process, text: str, timeout: float = 60) -> None:
    wait_until(lambda: text in process.log(), timeout, f"{process.name} to log {text!r}")


def into_the_epoch(job: dict[str, object]) -> None:
    """Lets the epoch that just began run about half way, so the kill lands mid-epoch.
    Where exactly does not matter to the outcome, only to what it exercises."""
    latest = job["latest_metrics"]
    assert isinstance(latest, dict)
    time.sleep(float(latest["epoch_seconds"]) / 2)


def test_sigkill_mid_epoch_resumes_from_the_checkpoint_each_time(fault_stack: StackFactory):
    stack, client = fault_stack(workers=2)
    spec = job_spec(epochs=6)
    killed = client.submit({**spec, "name": "killed-three-times"})
    reference = client.submit({**spec, "name": "never-killed"})

    recorded_at_kill: list[int] = []
    for attempt, epochs_before_kill in enumerate((1, 3, 4), start=1):
        client.running_with_attempt(killed["id"], attempt)
        job = client.epochs_done(killed["id"], epochs_before_kill)
        into_the_epoch(job)
        job = client.job(killed["id"])
        assert job["attempts"] == attempt
        kill(training_pid(job))  # SIGKILL: no checkpoint, no goodbye
        # What the dead attempt got recorded: nothing more can arrive from it.
        recorded_at_kill.append(len(audit(stack.database_url, killed["id"]).rows_per_epoch))

    for job in (killed, reference):
        assert client.finished(job["id"])["status"] == "succeeded", stack.logs()
    ledger = audit(stack.database_url, killed["id"])
    starts = [start for _, start, _ in ledger.attempts]
    figure(f"kills after epochs {recorded_at_kill}; attempts resumed at epochs {starts[1:]}")
    # Each new attempt resumed after the last epoch the killed one recorded: a kill costs
    # at most the epoch it interrupted.
    assert starts[1:] == recorded_at_kill
    assert [outcome for _, _, outcome in ledger.attempts] == [
        "lease_expired",
        "lease_expired",
        "lease_expired",
        "succeeded",
    ]

    resumed = metric_rows(client.http, killed["id"])
    uninterrupted = metric_rows(client.http, reference["id"])
    difference = max(
        abs(row[name] - other[name])
        for row, other in zip(resumed, uninterrupted, strict=True)
        for name in METRICS_COMPARED
    )
    figure(f"largest metric difference, killed 3 times vs never killed: {difference:.3g}")
    assert difference < 1e-6

    tally("sigkill mid-epoch x3", audits(stack.database_url, [killed["id"], reference["id"]]))


# By default a job whose worker died trains again within this long: the lease, one sweep,
# then the dispatch and the claim.
DEFAULT_RECOVERY_SECONDS = 45
DEFAULT_LEASE_SETTINGS = (
    "lease_seconds",
    "heartbeat_seconds",
    "sweep_seconds",
    "redispatch_seconds",
)


def attempt_started_at(database_url: str, job_id: str, attempt: int) -> float:
    with psycopg.connect(psycopg_url(database_url)) as db:
        (started_at,) = db.execute(
            "SELECT started_at FROM job_attempts WHERE job_id = %s AND attempt = %s",
            (job_id, attempt),
        ).fetchone() or (None,)
    assert started_at is not None
    return float(started_at.timestamp())


def test_with_the_default_lease_a_killed_workers_job_trains_again_within_45_s(
    fault_stack: StackFactory,
):
    defaults = {
        f"TUNELAB_{name.upper()}": str(Settings.model_fields[name].default)
        for name in DEFAULT_LEASE_SETTINGS
    }
    stack, client = fault_stack(workers=1, **defaults)
    job_id = client.submit(job_spec(epochs=3, name="default-lease"))["id"]
    job = client.epochs_done(job_id, 1)
    into_the_epoch(job)
    job = client.job(job_id)
    assert job["attempts"] == 1
    kill(training_pid(job))  # SIGKILL mid-epoch: the worker's pool starts a new process
    killed_at = time.time()  # the API stamps started_at with this machine's clock too

    client.running_with_attempt(job_id, 2)
    retrained_seconds = attempt_started_at(stack.database_url, job_id, 2) - killed_at
    figure(f"[default lease] worker killed → retrained in {retrained_seconds:.0f} s")
    assert retrained_seconds < DEFAULT_RECOVERY_SECONDS
    assert client.finished(job_id)["status"] == "succeeded", stack.logs()
    ledger = audit(stack.database_url, job_id)
    assert [outcome for _, _, outcome in ledger.attempts] == ["lease_expired", "succeeded"]
    tally("default lease", [ledger])


def test_sigterm_hands_the_job_back_and_the_next_worker_resumes_it(fault_stack: StackFactory):
    stack, client = fault_stack(workers=1, TUNELAB_HANDBACK_GRACE_SECONDS="20")
    job_id = client.submit(job_spec(epochs=4))["id"]
    job = client.epochs_done(job_id, 1)
    into_the_epoch(job)
    worker = stack.workers[-1]
    asked_at = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)  # to the main process only, as `docker stop` does
    worker.popen.wait(timeout=60)
    exit_seconds = time.monotonic() - asked_at
    handed_back = audit(stack.database_url, job_id)
    figure(
        f"SIGTERM to exit: {exit_seconds:.1f} s, after recording "
        f"{len(handed_back.rows_per_epoch)} epochs; attempts {handed_back.attempts}"
    )
    assert handed_back.attempts[0][2] == "handed_back"
    # The epoch under way fitted in the grace period: it was finished and recorded.
    assert len(handed_back.rows_per_epoch) == 2

    stack.start_worker("worker-after-sigterm")
    assert client.finished(job_id)["status"] == "succeeded", stack.logs()
    ledger = audit(stack.database_url, job_id)
    assert [(start, outcome) for _, start, outcome in ledger.attempts] == [
        (0, "handed_back"),
        (2, "succeeded"),
    ]
    tally("sigterm hand-back", [ledger])


def test_redis_killed_and_started_again_with_jobs_queued_and_running(
    fault_stack: StackFactory, own_redis: RedisServer
):
    stack, client = fault_stack(workers=1)
    jobs = [client.submit(job_spec(epochs=3, seed=seed)) for seed in range(4)]
    client.epochs_done(jobs[0]["id"], 1)  # one running, three waiting in Redis

    own_redis.kill()  # and every message it held, since it keeps nothing on disk
    worker = stack.workers[-1]
    wait_for_log(worker, "Connection to broker lost")
    own_redis.start()

    finished = [client.finished(job["id"]) for job in jobs]
    assert [job["status"] for job in finished] == ["succeeded"] * 4, stack.logs()
    first = audit(stack.database_url, jobs[0]["id"])
    figure(f"the running job's attempts: {first.attempts}")
    tally("redis restart", audits(stack.database_url, [job["id"] for job in jobs]))


@contextmanager
def unanswering_port() -> Iterator[int]:
    """A port that accepts connections and never says a word: a broker that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_api_killed_between_storing_a_job_and_ringing_the_broker(fault_stack: StackFactory):
    stack, client = fault_stack(workers=1)
    first_api = stack.api
    first_api.stop()
    body = job_spec(epochs=2, name="stored-not-sent")
    with unanswering_port() as port:
        hanging = stack.start_api(
            env={"TUNELAB_BROKER_URL": f"redis://127.0.0.1:{port}/0", "TUNELAB_SWEEP_SECONDS": "0"}
        )
        answers: list[int] = []

        def submit() -> None:
            # The API answers once the job is stored and rings the broker after; whether the
            # answer gets out before the kill does not matter to the client's retry below.
            try:
                response = client.http.post(
                    "/v1/jobs", json=body, headers={"Idempotency-Key": "once"}
                )
                answers.append(response.status_code)
            except httpx.TransportError:
                answers.append(0)

        submitter = threading.Thread(target=submit)
        submitter.start()

        def stored_job_id() -> str | None:
            with psycopg.connect(psycopg_url(stack.database_url)) as db:
                row = db.execute("SELECT id, dispatched_at FROM jobs").fetchone()
            return row[0] if row is not None and row[1] is None else None

        job_id = wait_until(stored_job_id, 30, "the job to be stored")
        hanging.kill()  # committed, the broker never rung
        submitter.join(timeout=30)
    figure(f"the client's first POST: {answers[0] or 'no answer'}")

    stack.start_api()
    # The client retries with the same Idempotency-Key: it gets the stored job, not a second.
    retried = client.submit(body, **{"Idempotency-Key": "once"})
    assert retried["id"] == job_id
    assert client.finished(job_id)["status"] == "succeeded", stack.logs()
    with psycopg.connect(psycopg_url(stack.database_url)) as db:
        (jobs_stored,) = db.execute("SELECT count(*) FROM jobs").fetchone() or (0,)
    assert jobs_stored == 1
    tally("api killed before the broker heard", audits(stack.database_url, [job_id]))


def test_a_frozen_worker_past_its_lease_is_replaced_and_then_refused(fault_stack: StackFactory):
    stack, client = fault_stack(workers=2)
    job_id = client.submit(job_spec(epochs=5))["id"]
    frozen = client.epochs_done(job_id, 1)
    pid = training_pid(frozen)
    kill(pid, signal.SIGSTOP)
    try:
        taken_over = client.running_with_attempt(job_id, 2)
        assert taken_over["worker"] != frozen["worker"]
        client.epochs_done(job_id, taken_over["progress"]["epochs_completed"] + 1)
    finally:
        kill(pid, signal.SIGCONT)
    wait_until(
        lambda: f"job {job_id} attempt 1 lost its lease" in stack.logs(),
        60,
        "the thawed attempt to hear that it lost its lease",
    )
    assert client.finished(job_id)["status"] == "succeeded", stack.logs()

    api_log = (stack.workdir / "api.log").read_text()
    refused = sum(1 for line in api_log.splitlines() if job_id in line and '" 409' in line)
    figure(f"writes refused from the frozen attempt: {refused}")
    assert refused >= 1
    ledger = audit(stack.database_url, job_id)
    assert [outcome for _, _, outcome in ledger.attempts] == ["lease_expired", "succeeded"]
    tally("sigstop past the lease", [ledger])


def test_a_job_that_kills_its_worker_every_time_fails_alone(fault_stack: StackFactory):
    stack, client = fault_stack(workers=2, TUNELAB_MAX_ATTEMPTS="3")
    poison = client.submit(job_spec(epochs=3, name="kills-its-worker"))
    others = [client.submit(job_spec(epochs=2, seed=seed)) for seed in (1, 2)]
    for attempt in (1, 2, 3):
        job = client.running_with_attempt(poison["id"], attempt)
        kill(training_pid(job))

    failed = client.finished(poison["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "max_attempts"
    figure(f"the reason given: {failed['error']['message']}")
    for attempt in (1, 2, 3):
        assert f"attempt {attempt} on " in failed["error"]["message"]
    for job in others:
        assert client.finished(job["id"])["status"] == "succeeded", stack.logs()
    tally(
        "a job that kills its worker",
        audits(stack.database_url, [poison["id"], *(job["id"] for job in others)]),
        expected={poison["id"]: "failed"},
    )


def attempts_started_after_cancel(database_url: str, job_ids: list[str]) -> int:
    with psycopg.connect(psycopg_url(database_url)) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id "
            "WHERE j.id = ANY(%s) AND j.status = 'cancelled' AND a.started_at > j.finished_at",
            (job_ids,),
        ).fetchone() or (0,)
    return int(count)


def test_cancelled_jobs_are_never_trained_even_across_worker_restarts(
    fault_stack: StackFactory,
):
    stack, client = fault_stack(workers=1)
    # Long enough that the cancel lands mid-training: on a quiet machine an epoch takes about
    # a second, and a job of 4 could end before its worker heard of the cancel.
    job_ids = [client.submit(job_spec(epochs=12, seed=seed))["id"] for seed in range(3)]

    def running(epochs_done: int, among: list[str]) -> str:
        """The job of `among` that is running with `epochs_done` epochs recorded; the queue
        does not promise an order."""

        def found() -> str | None:
            for job_id in among:
                job = client.job(job_id)
                if (
                    job["status"] == "running"
                    and job["progress"]["epochs_completed"] >= epochs_done
                ):
                    return job_id
            return None

        result: str = wait_until(found, 240, "a job to run")
        return result

    # A running job: it stops within a heartbeat.
    first = running(1, job_ids)
    worker = stack.workers[-1]
    cancelled_at = time.monotonic()
    assert client.http.post(f"/v1/jobs/{first}/cancel").status_code == 200
    # The worker hears of the cancel from its next heartbeat or epoch post ("cancelled"), or
    # first from its checkpoint upload, which the API refuses for an attempt of a job no
    # longer running ("lease lost"): either way the attempt stops and trains nothing more.
    stops = [f"job {first}: attempt 1 stopped ({why})" for why in ("cancelled", "lease lost")]
    wait_until(
        lambda: any(stop in worker.log() for stop in stops), 30, f"{worker.name} to stop {first}"
    )
    stop_seconds = time.monotonic() - cancelled_at
    rows_at_stop = len(audit(stack.database_url, first).rows_per_epoch)

    # The worker takes the next job and is stopped (it hands the job back); both remaining
    # jobs are cancelled while no worker runs, their messages waiting in the broker.
    rest = [job_id for job_id in job_ids if job_id != first]
    running(0, rest)
    worker.stop()
    for job_id in rest:
        answer = client.http.post(f"/v1/jobs/{job_id}/cancel")
        assert answer.status_code == 200, (answer.text, client.job(job_id))
    restarted = stack.start_worker("worker-0-restarted")
    control = client.submit(job_spec(epochs=1, name="after-the-restart"))
    assert client.finished(control["id"])["status"] == "succeeded", stack.logs()

    trained_after_cancel = attempts_started_after_cancel(stack.database_url, job_ids)
    assert len(audit(stack.database_url, first).rows_per_epoch) == rows_at_stop
    refused_claims = restarted.log().count("not claimed")
    figure(
        f"cancel to stop: {stop_seconds:.1f} s; attempts started after a cancel: "
        f"{trained_after_cancel}; deliveries of cancelled jobs refused after the restart: "
        f"{refused_claims}"
    )
    assert trained_after_cancel == 0
    assert refused_claims >= 2
    assert stop_seconds < 10
    tally(
        "cancel, then restart every worker",
        audits(stack.database_url, [*job_ids, control["id"]]),
        expected=dict.fromkeys(job_ids, "cancelled"),
    )


API_OUTAGE_SECONDS = 30


def test_the_api_down_for_30_seconds_during_training(fault_stack: StackFactory):
    # The outage is five times the 6 s lease: the API, back, waits a lease before expiring
    # any, and the worker's heartbeat renews its lease within that.
    stack, client = fault_stack(workers=1)
    job_id = client.submit(job_spec(epochs=12))["id"]
    client.epochs_done(job_id, 1)
    api, worker = stack.api, stack.workers[-1]
    api.kill()
    epochs_logged_before = worker.log().count(": test accuracy")
    outage_ends = time.monotonic() + API_OUTAGE_SECONDS
    wait_until(lambda: time.monotonic() >= outage_ends, API_OUTAGE_SECONDS + 5, "the outage")
    trained_while_down = worker.log().count(": test accuracy") - epochs_logged_before
    stack.start_api()

    job = client.finished(job_id)
    assert job["status"] == "succeeded", stack.logs()
    rows = metric_rows(client.http, job_id)
    assert [row["epoch"] for row in rows] == list(range(12))
    assert job["attempts"] == 1
    figure(
        f"epochs trained while the API was down for {API_OUTAGE_SECONDS} s: {trained_while_down}"
    )
    assert trained_while_down >= 1
    tally("api down 30 s", audits(stack.database_url, [job_id]))
