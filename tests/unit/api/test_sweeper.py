from datetime import timedelta

from sqlmodel import Session

from api.models import Job, utcnow
from api.sweeper import sweep
from tests.unit.api.test_jobs_routes import submit
from tests.unit.api.worker_calls import WorkerCalls


def job_row(engine, job_id: str) -> Job:
    with Session(engine) as session:
        return session.get(Job, job_id)


def after_the_lease(settings) -> object:
    return utcnow() + timedelta(seconds=settings.lease_seconds + 1)


class TestSweep:
    def test_a_job_the_broker_never_got_is_sent_once_it_is_back(
        self, client, auth, engine, dispatcher
    ):
        dispatcher.broken = True
        job = submit(client, auth)
        with Session(engine) as session:
            assert sweep(session, dispatcher, max_attempts=3).sent == 0
            dispatcher.broken = False
            assert sweep(session, dispatcher, max_attempts=3).sent == 1
            assert sweep(session, dispatcher, max_attempts=3).sent == 0
        assert dispatcher.sent == [job["id"]]
        assert job_row(engine, job["id"]).dispatched_at is not None

    def test_an_expired_lease_queues_the_job_again(
        self, client, auth, engine, dispatcher, worker_auth, settings
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        with Session(engine) as session:
            assert sweep(session, dispatcher, 3).requeued == 0  # the lease is still live
            counts = sweep(session, dispatcher, 3, now=after_the_lease(settings))
        assert (counts.requeued, counts.sent) == (1, 1)
        assert dispatcher.sent == [job["id"], job["id"]]
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "queued"
        # The lost attempt's writes are refused; the next attempt is number 2.
        assert worker.post_epoch(job["id"], attempt, 0).status_code == 409
        assert worker.attempt(job["id"])["attempt"] == 2

    def test_the_last_attempt_fails_the_job_with_a_reason(
        self, client, auth, engine, dispatcher, worker_auth, settings
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        for _ in range(2):
            worker.attempt(job["id"])
            with Session(engine) as session:
                sweep(session, dispatcher, 2, now=after_the_lease(settings))
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert fetched["status"] == "failed"
        assert fetched["error"]["type"] == "max_attempts"
        assert "2 attempts" in fetched["error"]["message"]
