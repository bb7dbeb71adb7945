import time
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col

from api.core.models import Job, SchedulerLease, as_utc, utcnow
from api.jobs.sweeper import LEASE_NAME, Sweeper, sweep
from tests.unit.api.tenant_calls import submit
from tests.unit.api.worker_calls import WorkerCalls, after_the_lease


def job_row(engine, job_id: str) -> Job:
    with Session(engine) as session:
        return session.get(Job, job_id)


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

    def test_a_sweep_told_not_to_expire_leases_leaves_them(
        self, client, auth, engine, dispatcher, worker_auth, settings
    ):
        job = submit(client, auth)
        WorkerCalls(client, worker_auth).attempt(job["id"])
        with Session(engine) as session:
            later = after_the_lease(settings)
            assert sweep(session, dispatcher, 3, now=later, expire_leases=False).requeued == 0
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "running"

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
        message = fetched["error"]["message"]
        assert "2 attempts" in message
        assert "attempt 1 on node-1 from epoch 0: lease expired" in message
        assert "attempt 2 on node-1 from epoch 0: lease expired" in message
        assert [row["outcome"] for row in fetched["attempt_history"]] == ["lease_expired"] * 2

    def test_handed_back_attempts_do_not_count_against_max_attempts(
        self, client, auth, engine, dispatcher, worker_auth, settings
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        for _ in range(3):
            assert worker.release(job["id"], worker.attempt(job["id"])).status_code == 200
        worker.attempt(job["id"])
        with Session(engine) as session:
            counts = sweep(session, dispatcher, 2, now=after_the_lease(settings))
        assert counts.requeued == 1  # one lost attempt of two allowed
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert [row["outcome"] for row in fetched["attempt_history"]] == [
            "handed_back",
            "handed_back",
            "handed_back",
            "lease_expired",
        ]


class TestRedispatch:
    def test_an_unclaimed_job_is_sent_again_with_growing_waits(
        self, client, auth, engine, dispatcher
    ):
        job = submit(client, auth)
        sent_at = job_row(engine, job["id"]).dispatched_at
        assert sent_at is not None

        def sends_at(seconds_later: float) -> int:
            with Session(engine) as session:
                return sweep(
                    session,
                    dispatcher,
                    3,
                    now=utcnow() + timedelta(seconds=seconds_later),
                    redispatch_seconds=10,
                ).resent

        assert sends_at(5) == 0  # still within the first wait
        assert sends_at(11) == 1  # the broker may have lost it: sent again
        assert sends_at(11 + 15) == 0  # the next wait is twice as long
        assert sends_at(11 + 21) == 1
        assert dispatcher.sent == [job["id"]] * 3
        assert job_row(engine, job["id"]).dispatches == 3

    def test_a_claimed_job_is_not_sent_again(
        self, client, auth, engine, dispatcher, worker_auth, settings
    ):
        job = submit(client, auth)
        WorkerCalls(client, worker_auth).attempt(job["id"])
        with Session(engine) as session:
            # Past the wait, within the lease.
            later = utcnow() + timedelta(seconds=settings.lease_seconds - 1)
            wait = settings.lease_seconds / 3
            assert sweep(session, dispatcher, 3, now=later, redispatch_seconds=wait).resent == 0
        assert dispatcher.sent == [job["id"]]


def expire_lease_row(engine, name: str) -> None:
    """What the lease row looks like once its holder died and its time ran out."""
    with Session(engine) as session:
        session.execute(
            update(SchedulerLease)
            .where(col(SchedulerLease.name) == name)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()


def lease_holder(engine, name: str) -> str | None:
    """Who holds the lease now, if anyone."""
    with Session(engine) as session:
        row = session.get(SchedulerLease, name)
        return row.holder if row is not None and as_utc(row.expires_at) > utcnow() else None


class TestSweeperLease:
    def test_one_process_sweeps_at_a_time(self, engine, dispatcher, settings):
        first, second = Sweeper(engine, dispatcher, settings), Sweeper(engine, dispatcher, settings)
        assert first.run_once() is not None
        assert second.run_once() is None
        assert first.run_once() is not None  # renewed
        assert lease_holder(engine, LEASE_NAME) == first.lease.holder

    def test_a_dead_holders_lease_is_taken_over_once_it_expires(self, engine, dispatcher, settings):
        first, second = Sweeper(engine, dispatcher, settings), Sweeper(engine, dispatcher, settings)
        first.run_once()
        expire_lease_row(engine, LEASE_NAME)  # first died and did not renew it
        assert second.run_once() is not None
        assert first.run_once() is None
        assert lease_holder(engine, LEASE_NAME) == second.lease.holder

    def test_stopping_releases_the_lease_at_once(self, engine, dispatcher, settings):
        first, second = Sweeper(engine, dispatcher, settings), Sweeper(engine, dispatcher, settings)
        first.run_once()
        first.stop()
        assert lease_holder(engine, LEASE_NAME) is None
        assert second.run_once() is not None

    def test_a_fresh_process_waits_one_job_lease_before_expiring_any(
        self, client, auth, engine, dispatcher, worker_auth, settings
    ):
        job = submit(client, auth)
        WorkerCalls(client, worker_auth).attempt(job["id"])
        with Session(engine) as session:
            session.execute(
                update(Job)
                .where(col(Job.id) == job["id"])
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
            session.commit()
        sweeper = Sweeper(engine, dispatcher, settings)
        assert sweeper.run_once().requeued == 0  # up for less than a lease: workers may be alive
        sweeper._started = time.monotonic() - settings.lease_seconds
        assert sweeper.run_once().requeued == 1
