"""Races between an attempt's posts and what happens to its job from outside (a cancel, a
claim, the study's end), on PostgreSQL with real concurrency: two sessions in two threads.

Each race pauses the first writer at the step where the old code had already made its
check but not yet written, lets the second run, and watches PostgreSQL itself (its
pg_stat_activity) to see whether the second finished or waits for a lock. Only then does the
first go on. Nothing is mocked but the pause.
"""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text, update
from sqlmodel import Session, col, select

from api.artifacts.local import LocalStore
from api.auth.keys import create_key
from api.core.db import make_engine
from api.core.migrations import upgrade
from api.core.models import AttemptRow, EpochMetricRow, Job, JobStatus, Study, utcnow
from api.jobs.ledger import add_job, cancel_job, claim_job
from api.studies.ledger import cancel_study, finish_study
from api.web.errors import JobNotCancellable, JobNotClaimable
from api.workers import attempts
from shared.checks import admit
from shared.messages import EpochMetrics, EpochReport, FinishReport, HandBack
from shared.settings import Settings
from shared.spec import JobSpec
from shared.study_spec import StudySpec
from tests.unit.api.recording_dispatcher import RecordingDispatcher

pytestmark = pytest.mark.integration

LEASE_SECONDS = 60.0
MAX_ATTEMPTS = 3
DEADLINE_SECONDS = 20.0


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def tenant_id(engine: Engine) -> str:
    with Session(engine) as session:
        tenant, _ = create_key(session, "acme")
        return tenant.id


def new_job(engine: Engine, tenant_id: str, **fields: Any) -> str:
    spec, analysis = admit(JobSpec(epochs=3), Settings(database_url="sqlite://"))
    with Session(engine) as session:
        job = add_job(session, tenant_id, spec, analysis, **fields)
        session.commit()
        return job.id


@dataclass
class Attempt:
    job_id: str
    attempt: int
    lease_token: str

    def post(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "lease_token": self.lease_token}


def claimed(engine: Engine, job_id: str, worker: str = "node-1") -> Attempt:
    with Session(engine, expire_on_commit=False) as session:
        job = claim_job(session, job_id, worker, LEASE_SECONDS, MAX_ATTEMPTS)
        return Attempt(job.id, job.attempts, job.lease_token or "")


def job_row(engine: Engine, job_id: str) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def attempt_outcomes(engine: Engine, job_id: str) -> list[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(AttemptRow).where(AttemptRow.job_id == job_id).order_by(col(AttemptRow.attempt))
        )
        return [row.outcome for row in rows]


def metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch,
        train_loss=0.5,
        train_accuracy=0.8,
        test_loss=0.4,
        test_accuracy=0.9,
        lr=0.05,
        batch_size=128,
        epoch_seconds=1.0,
        images_per_second=1000.0,
    )


# The route's own way in: a fresh session for each call, as a request gets.
def cancel(engine: Engine, job_id: str) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return cancel_job(session, job)


def finish(engine: Engine, attempt: Attempt) -> attempts.PostResult:
    with Session(engine, expire_on_commit=False) as session:
        report = FinishReport(**attempt.post(), status="succeeded")
        return attempts.finish(session, attempt.job_id, report)


def hand_back(engine: Engine, attempt: Attempt, dispatcher: RecordingDispatcher) -> Any:
    with Session(engine, expire_on_commit=False) as session:
        return attempts.hand_back(session, attempt.job_id, HandBack(**attempt.post()), dispatcher)


def post_epoch(engine: Engine, attempt: Attempt, store: LocalStore) -> attempts.PostResult:
    with Session(engine, expire_on_commit=False) as session:
        report = EpochReport(**attempt.post(), metrics=metrics(0))
        return attempts.post_epoch(session, attempt.job_id, report, store, LEASE_SECONDS)


def claim(engine: Engine, job_id: str, worker: str) -> Attempt:
    return claimed(engine, job_id, worker)


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None


def _run(call: Callable[[], Any], into: Outcome) -> None:
    try:
        into.value = call()
    except BaseException as error:  # noqa: BLE001 - handed to the test to assert on
        into.error = error


def lock_waiters(engine: Engine) -> int:
    """Sessions of this database that PostgreSQL has waiting for a lock now."""
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()


@dataclass
class Race:
    first: Outcome
    second: Outcome
    # Whether PostgreSQL made the second wait for the first's lock.
    second_waited: bool


def race(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    pause_in: tuple[Any, str],
    first: Callable[[], Any],
    second: Callable[[], Any],
) -> Race:
    """Runs `first` until it enters the step `pause_in` (module, name); runs `second` until it
    ends or PostgreSQL has it waiting for a lock; then lets `first` go on."""
    module, name = pause_in
    step = getattr(module, name)
    entered, go_on = threading.Event(), threading.Event()

    def paused(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert go_on.wait(DEADLINE_SECONDS), "the race never let the first writer go on"
        return step(*args, **kwargs)

    monkeypatch.setattr(module, name, paused)
    first_outcome, second_outcome = Outcome(), Outcome()
    first_thread = threading.Thread(target=_run, args=(first, first_outcome))
    first_thread.start()
    assert entered.wait(DEADLINE_SECONDS), f"the first writer never reached {name}"
    second_thread = threading.Thread(target=_run, args=(second, second_outcome))
    second_thread.start()
    waited = False
    deadline = threading.Event()
    timer = threading.Timer(DEADLINE_SECONDS, deadline.set)
    timer.start()
    try:
        while second_thread.is_alive() and not deadline.is_set():
            if lock_waiters(engine) > 0:
                waited = True
                break
            second_thread.join(0.01)
    finally:
        timer.cancel()
        go_on.set()
        first_thread.join(DEADLINE_SECONDS)
        second_thread.join(DEADLINE_SECONDS)
    assert not deadline.is_set(), "the second writer neither ended nor waited for a lock"
    return Race(first_outcome, second_outcome, waited)


class TestAnAttemptRacingACancel:
    def test_a_release_landing_after_a_cancel_never_queues_the_job_again(
        self, engine, tenant_id, monkeypatch
    ):
        dispatcher = RecordingDispatcher()
        attempt = claimed(engine, new_job(engine, tenant_id))
        outcome = race(
            engine,
            monkeypatch,
            (attempts, "release_job"),
            lambda: hand_back(engine, attempt, dispatcher),
            lambda: cancel(engine, attempt.job_id),
        )
        assert outcome.second_waited
        assert outcome.first.error is None and outcome.second.error is None
        # The cancel was answered 200: it stands, and the job never trains again.
        assert job_row(engine, attempt.job_id).status == JobStatus.cancelled
        with pytest.raises(JobNotClaimable):
            claim(engine, attempt.job_id, "node-2")
        assert attempt_outcomes(engine, attempt.job_id) == ["handed_back"]

    def test_a_finish_landing_after_a_cancel_does_not_overturn_it(
        self, engine, tenant_id, monkeypatch
    ):
        attempt = claimed(engine, new_job(engine, tenant_id))
        outcome = race(
            engine,
            monkeypatch,
            (attempts, "finish_job"),
            lambda: finish(engine, attempt),
            lambda: cancel(engine, attempt.job_id),
        )
        assert outcome.second_waited
        assert outcome.first.error is None
        # The finish took the row first: the cancel found the job ended and said so (409).
        assert isinstance(outcome.second.error, JobNotCancellable)
        assert job_row(engine, attempt.job_id).status == JobStatus.succeeded
        assert attempt_outcomes(engine, attempt.job_id) == ["succeeded"]

    def test_a_cancel_racing_a_claim_closes_the_attempt_the_claim_started(self, engine, tenant_id):
        dispatcher = RecordingDispatcher()
        job_id = new_job(engine, tenant_id)
        hand_back(engine, claimed(engine, job_id, "node-1"), dispatcher)
        # The cancel's request loaded the job (attempt 1 ended, queued) before the claim.
        with Session(engine, expire_on_commit=False) as cancelling:
            stale = cancelling.get(Job, job_id)
            assert stale is not None and stale.attempts == 1
            claim(engine, job_id, "node-2")
            cancel_job(cancelling, stale)
        assert job_row(engine, job_id).status == JobStatus.cancelled
        assert attempt_outcomes(engine, job_id) == ["handed_back", "cancelled"]


class TestTwoAttemptsOfOneJob:
    def test_an_old_attempt_s_epoch_and_a_takeover_never_both_land(
        self, engine, tenant_id, monkeypatch, tmp_path: Path
    ):
        job_id = new_job(engine, tenant_id)
        old = claimed(engine, job_id, "node-1")
        with Session(engine) as session:
            session.execute(
                update(Job)
                .where(col(Job.id) == job_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
            session.commit()
        outcome = race(
            engine,
            monkeypatch,
            (attempts, "record_epoch"),
            lambda: post_epoch(engine, old, LocalStore(tmp_path)),
            lambda: claim(engine, job_id, "node-2"),
        )
        assert outcome.second_waited
        assert outcome.first.error is None
        # The epoch post renewed the lease before the claim could look: no takeover.
        assert isinstance(outcome.second.error, JobNotClaimable)
        job = job_row(engine, job_id)
        assert (job.attempts, job.epochs_completed) == (1, 1)
        with Session(engine) as session:
            recorded = session.exec(select(EpochMetricRow.attempt)).all()
        assert recorded == [1]


def new_study(engine: Engine, tenant_id: str) -> str:
    spec = StudySpec.model_validate(
        {"space": {"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.1}}}
    )
    with Session(engine) as session:
        study = Study(tenant_id=tenant_id, spec=spec.model_dump(mode="json"), status="running")
        session.add(study)
        session.commit()
        return study.id


class TestAStudyCancel:
    def test_the_scheduler_s_end_of_a_study_never_overturns_a_cancel(self, engine, tenant_id):
        study_id = new_study(engine, tenant_id)
        with Session(engine, expire_on_commit=False) as scheduling:
            # The scheduler read the study running and found every trial done...
            study = scheduling.get(Study, study_id)
            assert study is not None
            # ...while a client cancelled it.
            with Session(engine, expire_on_commit=False) as cancelling:
                cancelled = cancelling.get(Study, study_id)
                assert cancelled is not None
                cancel_study(cancelling, cancelled)
            assert finish_study(scheduling, study, None) is False
        with Session(engine) as session:
            assert session.get(Study, study_id).status == "cancelled"  # type: ignore[union-attr]

    def test_a_cancel_that_fails_midway_leaves_nothing_half_done(
        self, engine, tenant_id, monkeypatch
    ):
        import api.studies.ledger as study_ledger

        study_id = new_study(engine, tenant_id)
        trials = [new_job(engine, tenant_id, study_id=study_id, trial=n) for n in range(3)]
        claimed(engine, trials[0])

        def crash(*args: Any, **kwargs: Any) -> list[str]:
            raise RuntimeError("the API process died here")

        with monkeypatch.context() as patched:
            patched.setattr(study_ledger, "cancel_active_jobs", crash)
            with Session(engine) as session, pytest.raises(RuntimeError):
                cancel_study(session, session.get(Study, study_id))  # type: ignore[arg-type]
        with Session(engine) as session:
            assert session.get(Study, study_id).status == "running"  # type: ignore[union-attr]
        assert {job_row(engine, job_id).status for job_id in trials} == {"queued", "running"}
        # Asked again, the cancel does all of it.
        with Session(engine) as session:
            cancel_study(session, session.get(Study, study_id))  # type: ignore[arg-type]
        assert {job_row(engine, job_id).status for job_id in trials} == {"cancelled"}
        assert attempt_outcomes(engine, trials[0]) == ["cancelled"]


class TestCancelsAtTheSameMomentAsTheAttemptsEnd:
    JOBS = 40

    @pytest.mark.parametrize("ending", ["finish", "release"])
    def test_a_cancel_answered_200_is_never_overturned(self, engine, tenant_id, ending):
        dispatcher = RecordingDispatcher()
        running = [claimed(engine, new_job(engine, tenant_id)) for _ in range(self.JOBS)]

        def end(attempt: Attempt) -> Any:
            if ending == "finish":
                return finish(engine, attempt)
            return hand_back(engine, attempt, dispatcher)

        def both_at_once(attempt: Attempt) -> tuple[Outcome, Outcome]:
            start = threading.Barrier(2, timeout=DEADLINE_SECONDS)
            cancelled, ended = Outcome(), Outcome()

            def at_the_barrier(call: Callable[[], Any], into: Outcome) -> None:
                start.wait()
                _run(call, into)

            threads = [
                threading.Thread(
                    target=at_the_barrier, args=(lambda: cancel(engine, attempt.job_id), cancelled)
                ),
                threading.Thread(target=at_the_barrier, args=(lambda: end(attempt), ended)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DEADLINE_SECONDS)
            return cancelled, ended

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(both_at_once, running))
        cancels_answered = 0
        for attempt, (cancelled, ended) in zip(running, results, strict=True):
            assert ended.error is None, ended.error
            assert cancelled.error is None or isinstance(cancelled.error, JobNotCancellable)
            job = job_row(engine, attempt.job_id)
            if cancelled.error is None:
                cancels_answered += 1
                assert job.status == JobStatus.cancelled, attempt.job_id
                # A cancelled job never trains again: no claim takes it.
                with pytest.raises(JobNotClaimable):
                    claim(engine, attempt.job_id, "node-2")
                assert job_row(engine, attempt.job_id).attempts == 1
            else:
                assert job.status == JobStatus.succeeded
            assert "running" not in attempt_outcomes(engine, attempt.job_id)
        print(
            f"[cancel vs {ending}] {self.JOBS} jobs: {cancels_answered} cancels answered 200, "
            f"{self.JOBS - cancels_answered} refused; none overturned"
        )
