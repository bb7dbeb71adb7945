"""What an attempt may still do once its job was stopped or taken over, through the worker
routes (the races themselves run on PostgreSQL in tests/integration/test_attempt_races.py)."""

from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from api.core.models import AttemptRow, Job, utcnow
from api.jobs.sweeper import sweep
from tests.unit.api.tenant_calls import submit
from tests.unit.api.worker_calls import WorkerCalls


def expire_lease(engine, job_id: str) -> None:
    with Session(engine) as session:
        session.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()


def outcomes(engine, job_id: str) -> list[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(AttemptRow).where(AttemptRow.job_id == job_id).order_by(col(AttemptRow.attempt))
        )
        return [row.outcome for row in rows]


class TestUploadsOfAStoppedJob:
    def test_a_cancelled_job_s_attempt_uploads_nothing(self, client, auth, worker_auth):
        worker = WorkerCalls(client, worker_auth)
        job = submit(client, auth)
        attempt = worker.attempt(job["id"])
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 200
        refused = worker.upload(job["id"], attempt, "epoch-000.pt", b"weights")
        assert refused.status_code == 409, refused.text
        assert "cancelled" in refused.json()["detail"]
        # The epoch post of that attempt hears of the cancel, as before.
        assert worker.post_epoch(job["id"], attempt, 0).json()["cancelled"] is True


class TestTakeoverOfAnExpiredLease:
    def test_a_claim_takes_over_while_attempts_are_left(
        self, client, auth, worker_auth, engine, settings
    ):
        worker = WorkerCalls(client, worker_auth)
        job = submit(client, auth)
        worker.attempt(job["id"], "node-1")
        expire_lease(engine, job["id"])
        taken = worker.claim(job["id"], "node-2")
        assert taken.status_code == 200, taken.text
        assert taken.json()["attempt"] == 2
        assert outcomes(engine, job["id"]) == ["lease_expired", "running"]

    def test_no_claim_takes_over_past_max_attempts(
        self, client, auth, worker_auth, engine, settings, dispatcher
    ):
        # max_attempts is 3: two attempts lost their lease, the third is losing it now.
        worker = WorkerCalls(client, worker_auth)
        job = submit(client, auth)
        for node in ("node-1", "node-2", "node-3"):
            worker.attempt(job["id"], node)
            expire_lease(engine, job["id"])
        refused = worker.claim(job["id"], "node-4")
        assert refused.status_code == 409, refused.text
        assert outcomes(engine, job["id"]) == ["lease_expired", "lease_expired", "running"]
        # The sweep applies the same rule: the job fails, with what became of each attempt.
        with Session(engine) as session:
            assert sweep(session, dispatcher, settings.max_attempts).failed == 1
        failed = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert failed["status"] == "failed"
        assert failed["error"]["type"] == "max_attempts"


class TestExponentCursors:
    def test_a_best_first_page_follows_on_from_a_tiny_accuracy(self, client, auth, worker_auth):
        worker = WorkerCalls(client, worker_auth)
        ids = []
        for accuracy in (0.00005, 0.00003, 0.00001):
            job = submit(client, auth)
            attempt = worker.attempt(job["id"])
            assert worker.post_epoch(job["id"], attempt, 0, test_accuracy=accuracy).is_success
            ids.append(job["id"])
        first = client.get("/v1/jobs?order=test_accuracy&limit=1", headers=auth).json()
        cursor = first["next_cursor"]
        assert "e-05" in cursor
        rest = client.get(
            "/v1/jobs", params={"order": "test_accuracy", "cursor": cursor}, headers=auth
        )
        assert rest.status_code == 200, rest.text
        assert [job["id"] for job in first["items"] + rest.json()["items"]] == ids
