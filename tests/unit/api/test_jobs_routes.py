from pathlib import Path

import pytest
from sqlalchemy import Engine, event

from cli.client.server_events import parse_events
from shared.presets import PRESETS
from shared.settings import Settings
from tests.unit.api.recording_dispatcher import RecordingDispatcher
from tests.unit.api.tenant_calls import PROBLEM, QUICK_JOB, error_fields, submit
from tests.unit.api.tenant_keys import TenantKeys
from tests.unit.api.worker_calls import WorkerCalls, checkpoint_record


class TestSubmitJob:
    def test_jobs_reach_the_broker_in_the_order_they_were_submitted(self, client, auth, dispatcher):
        ids = [submit(client, auth, {"name": f"job-{n}"})["id"] for n in range(5)]
        assert dispatcher.sent == ids

    def test_empty_spec_is_the_baseline_for_one_epoch(self, client, auth, dispatcher):
        job = submit(client, auth, {})
        assert job["status"] == "queued"
        assert job["spec"]["model"]["preset"] == "baseline"
        assert job["spec"]["epochs"] == 1
        assert job["progress"] == {
            "epochs_completed": 0,
            "epochs": 1,
            "batches_completed": None,
            "batches": None,
            "images_per_second": None,
            "eta_seconds": None,
        }
        assert job["analysis"]["parameters"] > 0
        assert dispatcher.sent == [job["id"]]

    def test_defaults_are_filled_in(self, client, auth):
        job = submit(client, auth, {"optimizer": {"name": "adam"}})
        assert job["spec"]["optimizer"] == {
            "name": "adam",
            "lr": 0.001,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "weight_decay": 0.0,
        }

    def test_unknown_field_is_named(self, client, auth):
        assert error_fields(client.post("/v1/jobs", json={"epoch": 3}, headers=auth)) == ["epoch"]

    def test_bad_layer_field_is_named_by_its_json_path(self, client, auth):
        body = {"model": {"layers": [{"type": "conv", "out_channels": 8, "kernel_size": 0}]}}
        fields = error_fields(client.post("/v1/jobs", json=body, headers=auth))
        assert fields == ["model.layers[0].kernel_size"]

    def test_unknown_layer_type_lists_the_allowed_ones(self, client, auth):
        body = {"model": {"layers": [{"type": "convolution"}]}}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert error_fields(response) == ["model.layers[0]"]
        assert "'conv'" in response.json()["errors"][0]["message"]

    def test_network_must_end_in_ten_outputs(self, client, auth):
        body = {"model": {"layers": [{"type": "conv", "out_channels": 8}, {"type": "gap"}]}}
        assert error_fields(client.post("/v1/jobs", json=body, headers=auth)) == ["model.layers"]

    def test_model_that_shrinks_below_one_pixel_names_the_layer(self, client, auth):
        body = {
            "model": {
                "layers": [
                    {"type": "conv", "out_channels": 8, "kernel_size": 27},
                    {"type": "maxpool", "kernel_size": 4},
                ]
            }
        }
        fields = error_fields(client.post("/v1/jobs", json=body, headers=auth))
        assert "model.layers[1]" in fields

    def test_limits_are_settings(self, client, auth, settings: Settings):
        body = {"epochs": settings.max_epochs + 1}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert error_fields(response) == ["epochs"]
        assert str(settings.max_epochs) in response.json()["errors"][0]["message"]

    def test_invalid_json_is_a_422_not_a_500(self, client, auth):
        response = client.post(
            "/v1/jobs", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
        )
        assert error_fields(response) == ["(body)"]

    def test_without_a_key_is_401(self, client):
        response = client.post("/v1/jobs", json={})
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["www-authenticate"] == "Bearer"

    def test_with_a_wrong_key_is_401(self, client):
        for key in ("nonsense", "tlk_00000000_wrong", "tlk_a_b_c"):
            response = client.post("/v1/jobs", json={}, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 401

    def test_job_is_kept_when_the_broker_is_down(self, client, auth, dispatcher):
        dispatcher.broken = True
        job = submit(client, auth)
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "queued"

    def test_idempotency_key_returns_the_same_job(self, client, auth, dispatcher):
        headers = {**auth, "Idempotency-Key": "abc"}
        first = client.post("/v1/jobs", json=QUICK_JOB, headers=headers)
        again = client.post("/v1/jobs", json=QUICK_JOB, headers=headers)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        assert dispatcher.sent == [first.json()["id"]]

    def test_idempotency_key_with_another_body_is_409(self, client, auth):
        headers = {**auth, "Idempotency-Key": "abc"}
        client.post("/v1/jobs", json=QUICK_JOB, headers=headers)
        response = client.post("/v1/jobs", json={**QUICK_JOB, "epochs": 3}, headers=headers)
        assert response.status_code == 409
        assert response.headers["content-type"] == PROBLEM


class TestListJobs:
    def test_newest_first_in_pages(self, client, auth):
        ids = [submit(client, auth)["id"] for _ in range(5)]
        first = client.get("/v1/jobs", params={"limit": 2}, headers=auth).json()
        assert [job["id"] for job in first["items"]] == ids[::-1][:2]
        second = client.get(
            "/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth
        ).json()
        assert [job["id"] for job in second["items"]] == ids[::-1][2:4]
        last = client.get(
            "/v1/jobs", params={"limit": 2, "cursor": second["next_cursor"]}, headers=auth
        ).json()
        assert [job["id"] for job in last["items"]] == ids[:1]
        assert last["next_cursor"] is None

    def test_filter_by_status(self, client, auth):
        kept = submit(client, auth)
        cancelled = submit(client, auth)
        client.post(f"/v1/jobs/{cancelled['id']}/cancel", headers=auth)
        queued = client.get("/v1/jobs", params={"status": "queued"}, headers=auth).json()
        assert [job["id"] for job in queued["items"]] == [kept["id"]]

    def test_unknown_status_is_422(self, client, auth):
        assert error_fields(client.get("/v1/jobs", params={"status": "done"}, headers=auth)) == [
            "query.status"
        ]

    def test_only_the_tenants_own_jobs(self, client, keys: TenantKeys):
        mine, theirs = keys.headers("acme"), keys.headers("globex")
        submit(client, theirs)
        assert client.get("/v1/jobs", headers=mine).json()["items"] == []


class TestGetJob:
    def test_returns_the_job(self, client, auth):
        job = submit(client, auth)
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert fetched["id"] == job["id"]
        assert fetched["created_at"].endswith("Z") or fetched["created_at"].endswith("+00:00")

    def test_unknown_job_is_404(self, client, auth):
        response = client.get("/v1/jobs/job_nope", headers=auth)
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM

    def test_another_tenants_job_is_404(self, client, keys: TenantKeys):
        job = submit(client, keys.headers("globex"))
        assert client.get(f"/v1/jobs/{job['id']}", headers=keys.headers("acme")).status_code == 404


class TestMetrics:
    def test_rows_in_order_and_since_epoch(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        for epoch in (0, 1):
            worker.post_epoch(job["id"], attempt, epoch, test_accuracy=0.5 + epoch / 10)
        rows = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()["items"]
        assert [row["epoch"] for row in rows] == [0, 1]
        later = client.get(
            f"/v1/jobs/{job['id']}/metrics", params={"since_epoch": 0}, headers=auth
        ).json()["items"]
        assert [row["epoch"] for row in later] == [1]
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert fetched["latest_metrics"]["epoch"] == 1
        assert fetched["best"] == {"epoch": 1, "test_accuracy": 0.6, "val_accuracy": None}
        assert fetched["progress"]["epochs_completed"] == 2

    def test_another_tenants_metrics_are_404(self, client, keys: TenantKeys):
        job = submit(client, keys.headers("globex"))
        response = client.get(f"/v1/jobs/{job['id']}/metrics", headers=keys.headers("acme"))
        assert response.status_code == 404


class TestEvents:
    def test_streams_metrics_then_the_final_status(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        worker.post_epoch(job["id"], attempt, 0)
        worker.finish(job["id"], attempt)
        response = client.get(f"/v1/jobs/{job['id']}/events", headers=auth)
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [(event.event, event.data) for event in parse_events(response.text.splitlines())]
        assert [name for name, _ in events] == ["metrics", "status"]
        assert events[0][1]["epoch"] == 0
        assert events[1][1] == {"status": "succeeded", "error": None}


class TestCancel:
    def test_cancel_a_queued_job(self, client, auth):
        job = submit(client, auth)
        cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["finished_at"] is not None

    def test_cancel_twice_is_409(self, client, auth):
        job = submit(client, auth)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 409

    def test_running_job_hears_of_it_on_its_next_post(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        assert worker.heartbeat(job["id"], attempt).json()["cancelled"] is True
        assert worker.post_epoch(job["id"], attempt, 0).json()["cancelled"] is True
        assert client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()["items"] == []

    def test_another_tenants_job_is_404(self, client, keys: TenantKeys):
        job = submit(client, keys.headers("globex"))
        response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=keys.headers("acme"))
        assert response.status_code == 404


class TestCheckpoints:
    @pytest.fixture
    def job_with_checkpoint(self, client, auth, worker_auth, settings: Settings) -> dict:
        job = submit(client, auth)
        payload = b"checkpoint bytes"
        path = Path(settings.artifact_dir) / job["id"] / "epoch-000.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(payload)
        import hashlib

        record = checkpoint_record(job["id"], 0, hashlib.sha256(payload).hexdigest(), len(payload))
        worker = WorkerCalls(client, worker_auth)
        worker.post_epoch(job["id"], worker.attempt(job["id"]), 0, checkpoint=record)
        return {**job, "payload": payload, "record": record}

    def test_lists_checkpoints(self, client, auth, job_with_checkpoint):
        job = job_with_checkpoint
        items = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()["items"]
        assert [(i["name"], i["sha256"], i["bytes"]) for i in items] == [
            (job["record"]["name"], job["record"]["sha256"], job["record"]["bytes"])
        ]

    def test_downloads_a_checkpoint(self, client, auth, job_with_checkpoint):
        job = job_with_checkpoint
        response = client.get(f"/v1/jobs/{job['id']}/checkpoints/epoch-000.pt", headers=auth)
        assert response.status_code == 200
        assert response.content == job["payload"]
        assert response.headers["x-checkpoint-sha256"] == job["record"]["sha256"]

    def test_unrecorded_names_are_404(self, client, auth, job_with_checkpoint):
        job = job_with_checkpoint
        for name in ("epoch-001.pt", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
            response = client.get(f"/v1/jobs/{job['id']}/checkpoints/{name}", headers=auth)
            assert response.status_code == 404, name

    def test_another_tenant_cannot_download(self, client, keys: TenantKeys, job_with_checkpoint):
        job = job_with_checkpoint
        response = client.get(
            f"/v1/jobs/{job['id']}/checkpoints/epoch-000.pt", headers=keys.headers("globex")
        )
        assert response.status_code == 404


class TestAnalyze:
    def test_reports_each_layer(self, client, auth):
        model = {
            "layers": [
                {"type": "conv", "out_channels": 4, "kernel_size": 3},
                {"type": "gap"},
                {"type": "linear", "out_features": 10},
            ]
        }
        analysis = client.post("/v1/architectures/analyze", json=model, headers=auth).json()
        assert [layer["output_shape"] for layer in analysis["layers"]] == [[4, 26, 26], [4], [10]]
        assert analysis["parameters"] == 4 * 9 + 4 + 4 * 10 + 10

    def test_shrinking_below_one_pixel_names_the_layer(self, client, auth):
        model = {
            "layers": [
                {"type": "conv", "out_channels": 4, "kernel_size": 28},
                {"type": "conv", "out_channels": 4, "kernel_size": 3},
            ]
        }
        response = client.post("/v1/architectures/analyze", json=model, headers=auth)
        assert error_fields(response) == ["layers[1]"]


class TestPresets:
    def test_lists_the_baseline_with_its_analysis(self, client, auth):
        items = client.get("/v1/presets", headers=auth).json()["items"]
        baseline = next(item for item in items if item["name"] == "baseline")
        assert baseline["analysis"]["output_shape"] == [10]


class TestHealth:
    def test_healthz_needs_no_key(self, client):
        assert client.get("/healthz").json() == {"status": "ok", "checks": {}}

    def test_readyz_checks_database_and_broker(self, client):
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}

    def test_readyz_is_503_when_the_broker_is_down(self, client, dispatcher: RecordingDispatcher):
        dispatcher.broken = True
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["broker"].startswith("unavailable")


class TestPresetJobs:
    def test_each_presets_job_is_accepted_as_it_is(self, client, auth):
        for preset in client.get("/v1/presets", headers=auth).json()["items"]:
            created = client.post("/v1/jobs", json=preset["job"], headers=auth)
            assert created.status_code == 201, preset["name"]
            assert created.json()["spec"]["model"]["preset"] == preset["name"]


class StatementLog:
    """The SQL statements an engine runs while it is recording."""

    def __init__(self, engine: Engine) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)
        self.engine = engine

    def _record(self, _conn, _cursor, statement, _params, _context, _many) -> None:
        self.statements.append(statement)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


def jobs_with_history(client, auth, worker_auth, count: int) -> None:
    worker = WorkerCalls(client, worker_auth)
    for _ in range(count):
        job_id = submit(client, auth)["id"]
        attempt = worker.attempt(job_id)
        for epoch in range(2):
            record = worker.uploaded_checkpoint(job_id, attempt, epoch)
            response = worker.post_epoch(job_id, attempt, epoch, checkpoint=record)
            assert response.status_code == 200, response.text


class TestQueryCounts:
    def statements_for(self, client, engine, request) -> list[str]:
        log = StatementLog(engine)
        try:
            request()
        finally:
            log.close()
        return log.statements

    def test_a_page_of_jobs_costs_the_same_queries_for_3_jobs_as_for_30(
        self, client, auth, worker_auth, engine, settings
    ):
        settings.max_concurrent_jobs = 100

        def page() -> None:
            response = client.get("/v1/jobs", params={"limit": 100}, headers=auth)
            assert response.status_code == 200
            for job in response.json()["items"]:
                assert job["latest_metrics"]["epoch"] == 1
                assert [c["epoch"] for c in job["checkpoints"]] == [0, 1]
                assert len(job["attempt_history"]) == 1

        jobs_with_history(client, auth, worker_auth, 3)
        few = self.statements_for(client, engine, page)
        jobs_with_history(client, auth, worker_auth, 27)
        many = self.statements_for(client, engine, page)
        assert len(many) == len(few)
        # The key, the page, and the latest metrics, checkpoints and attempts of its jobs.
        assert len(many) <= 5

    def test_a_submission_with_an_idempotency_key_looks_it_up_once(self, client, auth, engine):
        headers = {**auth, "Idempotency-Key": "once"}
        lookups = [
            statement
            for statement in self.statements_for(
                client, engine, lambda: client.post("/v1/jobs", json=QUICK_JOB, headers=headers)
            )
            if statement.lstrip().upper().startswith("SELECT")
            and "jobs.idempotency_key =" in statement
        ]
        assert len(lookups) == 1


class TestStoredSpecs:
    def test_a_queued_job_is_claimed_as_stored_after_its_preset_changed(
        self, client, auth, worker_auth, monkeypatch
    ):
        job = submit(client, auth, {**QUICK_JOB, "model": {"preset": "compact-8k"}})
        stored_layers = job["spec"]["model"]["layers"]
        monkeypatch.delitem(PRESETS, "compact-8k")

        claim = WorkerCalls(client, worker_auth).claim(job["id"])
        assert claim.status_code == 200, claim.text
        spec = claim.json()["spec"]
        assert spec["model"]["layers"] == stored_layers
        assert spec["model"]["preset"] == "compact-8k"
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200
