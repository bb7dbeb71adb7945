"""GET /metrics: who may scrape it, and what the API's metrics count.

The counters and histograms belong to the process, so every app a test creates shares
them: tests compare a scrape before and after what they do, never absolute values. The job
counts come from each app's own database, so those are exact.
"""

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel

from api.core.db import make_engine
from api.jobs.sweeper import sweep
from api.main import create_app
from shared.settings import Settings
from tests.unit.api.recording_dispatcher import RecordingDispatcher
from tests.unit.api.tenant_calls import PROBLEM, submit
from tests.unit.api.worker_calls import WorkerCalls, after_the_lease

TOKEN = "test-metrics-token"
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}
LATENCY = "tunelab_http_request_duration_seconds"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_token": TOKEN})


@dataclass
class Scrape:
    text: str

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a series not (yet) exported."""
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def names(self) -> set[str]:
        return {family.name for family in text_string_to_metric_families(self.text)}


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200, response.text
    return Scrape(response.text)


class TestMetricsAccess:
    def test_guessing_the_token_is_limited_like_guessing_keys(self, settings, engine):
        limited = settings.model_copy(update={"failed_auth_per_minute": 2})
        client = TestClient(create_app(limited, engine=engine, dispatcher=RecordingDispatcher()))
        wrong = {"Authorization": "Bearer guess"}
        statuses = [client.get("/metrics", headers=wrong).status_code for _ in range(3)]
        assert statuses == [401, 401, 429]
        # The right token from that address waits too; the tenant routes are counted apart.
        assert client.get("/metrics", headers=SCRAPER).status_code == 429
        assert client.get("/healthz").status_code == 200

    def test_without_a_token_it_is_a_401_problem(self, client):
        response = client.get("/metrics")
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["type"] == "urn:tunelab:problem:unauthorized"

    def test_a_wrong_token_is_refused(self, client):
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM

    def test_a_tenant_key_is_refused(self, client, auth):
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        response = client.get("/metrics", headers=auth)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM

    def test_the_worker_token_is_refused(self, client, worker_auth):
        assert client.get("/metrics", headers=worker_auth).status_code == 401

    def test_the_metrics_token_gets_the_text_format(self, client):
        response = client.get("/metrics", headers=SCRAPER)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "tunelab_jobs" in Scrape(response.text).names()

    def test_it_is_off_without_a_configured_token(self, settings, engine, dispatcher):
        unset = settings.model_copy(update={"metrics_token": ""})
        client = TestClient(create_app(unset, engine=engine, dispatcher=dispatcher))
        response = client.get("/metrics", headers={"Authorization": "Bearer "})
        # Answered like a path that names nothing.
        assert response.status_code == 404
        assert response.json() == client.get("/no-such-path").json()

    def test_it_is_not_in_the_openapi_document(self, client):
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


class TestRequestLatency:
    def test_requests_are_observed_by_route_template(self, client, auth):
        job = submit(client, auth)
        route = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "200"}
        before = scrape(client).value(f"{LATENCY}_count", **route)
        for _ in range(2):
            assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200
        after = scrape(client)
        assert after.value(f"{LATENCY}_count", **route) == before + 2
        assert job["id"] not in after.text

    def test_errors_are_observed_with_their_status(self, client, auth):
        route = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "404"}
        before = scrape(client).value(f"{LATENCY}_count", **route)
        assert client.get("/v1/jobs/job_nope", headers=auth).status_code == 404
        assert scrape(client).value(f"{LATENCY}_count", **route) == before + 1

    def test_paths_no_route_serves_share_one_label(self, client):
        unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
        before = scrape(client).value(f"{LATENCY}_count", **unmatched)
        for path in ("/no/such-path-1", "/no/such-path-2"):
            assert client.get(path).status_code == 404
        after = scrape(client)
        assert after.value(f"{LATENCY}_count", **unmatched) == before + 2
        assert "such-path" not in after.text

    def test_unknown_methods_share_one_label(self, client):
        other = {"route": "/v1/jobs", "method": "other", "status": "405"}
        before = scrape(client).value(f"{LATENCY}_count", **other)
        assert client.request("BREW", "/v1/jobs").status_code == 405
        after = scrape(client)
        assert after.value(f"{LATENCY}_count", **other) == before + 1
        assert "BREW" not in after.text


class TestJobCounts:
    def test_jobs_are_counted_by_status(self, client, auth, worker_auth):
        jobs = [submit(client, auth) for _ in range(3)]
        WorkerCalls(client, worker_auth).attempt(jobs[0]["id"])
        counts = scrape(client)
        assert counts.value("tunelab_jobs", status="queued") == 2
        assert counts.value("tunelab_jobs", status="running") == 1
        assert counts.value("tunelab_jobs", status="succeeded") == 0
        assert "tunelab_jobs" in counts.names()  # statuses without jobs are 0, not absent
        assert counts.value("tunelab_database_up") == 1

    def test_each_app_counts_its_own_database(self, client, auth, settings):
        submit(client, auth)
        other_engine = make_engine("sqlite://")
        SQLModel.metadata.create_all(other_engine)
        try:
            other = TestClient(
                create_app(settings, engine=other_engine, dispatcher=RecordingDispatcher())
            )
            assert scrape(other).value("tunelab_jobs", status="queued") == 0
            assert scrape(client).value("tunelab_jobs", status="queued") == 1
        finally:
            other_engine.dispose()

    def test_an_unreadable_database_still_serves_the_other_metrics(self, client, engine: Engine):
        SQLModel.metadata.drop_all(engine)
        counts = scrape(client)
        assert counts.value("tunelab_database_up") == 0
        assert "tunelab_jobs" not in counts.names()
        assert LATENCY in counts.names()


class TestAttemptCounters:
    def test_a_claim_counts_an_attempt_and_a_refused_one_does_not(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        before = scrape(client).value("tunelab_attempts_started_total")
        worker.attempt(job["id"])
        assert scrape(client).value("tunelab_attempts_started_total") == before + 1
        assert worker.claim(job["id"], "node-2").status_code == 409  # leased to a live one
        assert scrape(client).value("tunelab_attempts_started_total") == before + 1

    @pytest.mark.parametrize(("max_attempts", "outcome"), [(3, "requeued"), (1, "failed")])
    def test_an_expired_lease_is_counted_by_outcome(
        self, client, auth, worker_auth, engine, dispatcher, settings, max_attempts, outcome
    ):
        job = submit(client, auth)
        WorkerCalls(client, worker_auth).attempt(job["id"])
        before = scrape(client)
        with Session(engine) as session:
            sweep(session, dispatcher, max_attempts, now=after_the_lease(settings))
        after = scrape(client)
        name = "tunelab_leases_expired_total"
        assert after.value(name, outcome=outcome) == before.value(name, outcome=outcome) + 1
        other = "failed" if outcome == "requeued" else "requeued"
        assert after.value(name, outcome=other) == before.value(name, outcome=other)


class TestEpochHistograms:
    def _observed(self, client: TestClient) -> tuple[float, float, float, float]:
        now = scrape(client)
        return (
            now.value("tunelab_epoch_seconds_count"),
            now.value("tunelab_epoch_seconds_sum"),
            now.value("tunelab_epoch_images_per_second_count"),
            now.value("tunelab_epoch_images_per_second_sum"),
        )

    def test_a_new_epoch_is_observed_and_a_repeated_post_is_not(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        seconds, seconds_sum, images, images_sum = self._observed(client)
        report = {"epoch_seconds": 2.5, "images_per_second": 1234.0}
        assert worker.post_epoch(job["id"], attempt, 0, **report).status_code == 200
        once = (seconds + 1, seconds_sum + 2.5, images + 1, images_sum + 1234.0)
        assert self._observed(client) == pytest.approx(once)
        # The same post again, as after a timeout: the ledger keeps the first, and so do we.
        assert worker.post_epoch(job["id"], attempt, 0, **report).status_code == 200
        assert self._observed(client) == pytest.approx(once)

    def test_a_resumed_attempt_is_observed_only_past_the_recorded_epochs(
        self, client, auth, worker_auth, engine, dispatcher, settings
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        first = worker.attempt(job["id"])
        for epoch in (0, 1):
            assert worker.post_epoch(job["id"], first, epoch).status_code == 200
        with Session(engine) as session:
            assert sweep(session, dispatcher, 3, now=after_the_lease(settings)).requeued == 1
        second = worker.attempt(job["id"])
        count = self._observed(client)[0]
        # Resumed from an earlier checkpoint, the second attempt trains epoch 1 again.
        assert worker.post_epoch(job["id"], second, 1).status_code == 200
        assert self._observed(client)[0] == count
        assert worker.post_epoch(job["id"], second, 2).status_code == 200
        assert self._observed(client)[0] == count + 1
