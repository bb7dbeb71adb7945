"""What the fault scenarios share: a Redis server of their own, the ledger read straight
from PostgreSQL, and the tally each scenario prints and asserts."""

import os
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from testbed.services import psycopg_url
from testbed.stack import Stack, free_port, wait_until
from tests.figures import figure

FINISHED = {"succeeded", "failed", "cancelled"}


@dataclass
class RedisServer:
    """A redis-server on a free port that a scenario may kill and start again. It keeps
    nothing on disk, so a restart loses every message, as a Redis without persistence does."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", self.host, "--save", ""]
            # Off only when it listens on a test network: it has no password.
            + ["--protected-mode", "yes" if self.host == "127.0.0.1" else "no"]
            + ["--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 20, "redis-server to answer")
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def training_pid(job: dict[str, Any]) -> int:
    """The pid of the process training `job`: workers are named host-pid."""
    return int(job["worker"].rsplit("-", 1)[1])


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Client:
    http: httpx.Client

    def submit(self, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = self.http.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
        return result

    def wait_for(self, job_id: str, what: str, check: Any, timeout: float = 240) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            try:
                job = self.job(job_id)
            except httpx.TransportError:
                return None  # the API may be down on purpose
            return job if check(job) else None

        result: dict[str, Any] = wait_until(reached, timeout, f"job {job_id} {what}", interval=0.1)
        return result

    def running_with_attempt(self, job_id: str, attempt: int) -> dict[str, Any]:
        return self.wait_for(
            job_id,
            f"to run attempt {attempt}",
            lambda job: job["status"] == "running" and job["attempts"] >= attempt,
        )

    def epochs_done(self, job_id: str, epochs: int) -> dict[str, Any]:
        return self.wait_for(
            job_id,
            f"to report {epochs} epochs",
            lambda job: job["progress"]["epochs_completed"] >= epochs,
        )

    def finished(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        return self.wait_for(job_id, "to finish", lambda job: job["status"] in FINISHED, timeout)


def client_for(stack: Stack, key: str) -> Client:
    return Client(
        httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    )


@dataclass
class JobAudit:
    job_id: str
    status: str
    epochs: int
    # Metrics rows per epoch; anything but one each is a loss or a duplicate.
    rows_per_epoch: dict[int, int]
    # Rows written by an attempt after a later attempt had started from an earlier epoch:
    # two attempts training the job at once, both heard.
    stale_rows: int
    attempts: list[tuple[int, int, str]]  # (attempt, start_epoch, outcome)

    @property
    def lost(self) -> bool:
        return self.status == "succeeded" and any(
            self.rows_per_epoch.get(epoch, 0) == 0 for epoch in range(self.epochs)
        )

    @property
    def duplicated(self) -> bool:
        return self.stale_rows > 0 or any(count > 1 for count in self.rows_per_epoch.values())


def audit(database_url: str, job_id: str) -> JobAudit:
    """Reads the ledger itself, not the API's view of it."""
    with psycopg.connect(psycopg_url(database_url)) as db:
        status, epochs = db.execute(
            "SELECT status, epochs FROM jobs WHERE id = %s", (job_id,)
        ).fetchone() or ("missing", 0)
        rows = db.execute(
            "SELECT epoch, attempt FROM epoch_metrics WHERE job_id = %s", (job_id,)
        ).fetchall()
        attempts = db.execute(
            "SELECT attempt, start_epoch, outcome FROM job_attempts WHERE job_id = %s "
            "ORDER BY attempt",
            (job_id,),
        ).fetchall()
    rows_per_epoch: dict[int, int] = {}
    for epoch, _ in rows:
        rows_per_epoch[epoch] = rows_per_epoch.get(epoch, 0) + 1
    stale = sum(
        1
        for epoch, attempt in rows
        for later, start_epoch, _ in attempts
        if later > attempt and epoch >= start_epoch
    )
    return JobAudit(job_id, status, epochs, rows_per_epoch, stale, attempts)


def tally(scenario: str, audits: list[JobAudit], expected: dict[str, str] | None = None) -> str:
    """Prints and asserts the scenario's figures. A job is lost if it did not end as expected
    (succeeded, unless `expected` says otherwise) or misses an epoch's metrics."""
    expected = expected or {}
    lost = sum(a.status != expected.get(a.job_id, "succeeded") or a.lost for a in audits)
    duplicated = sum(a.duplicated for a in audits)
    succeeded = sum(a.status == "succeeded" for a in audits)
    line = (
        f"[{scenario}] submitted {len(audits)} / succeeded {succeeded} / "
        f"lost {lost} / duplicated {duplicated}"
    )
    figure(line)
    assert lost == 0 and duplicated == 0, (line, audits)
    return line


def audits(database_url: str, job_ids: Iterable[str]) -> list[JobAudit]:
    return [audit(database_url, job_id) for job_id in job_ids]
