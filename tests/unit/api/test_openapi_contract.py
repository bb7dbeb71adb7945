"""What a client generator reads in /openapi.json, and the HTTP details it relies on."""

import pytest

from shared.presets import PRESETS
from shared.settings import Settings

PUBLIC_OPERATIONS = {
    ("post", "/v1/jobs"): "submit_job",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("delete", "/v1/jobs/{job_id}"): "delete_job",
    ("get", "/v1/jobs/{job_id}/metrics"): "job_metrics",
    ("get", "/v1/jobs/{job_id}/events"): "job_events",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/checkpoints"): "list_checkpoints",
    ("get", "/v1/jobs/{job_id}/checkpoints/{name}"): "download_checkpoint",
    ("post", "/v1/studies"): "submit_study",
    ("get", "/v1/studies"): "list_studies",
    ("get", "/v1/studies/{study_id}"): "get_study",
    ("get", "/v1/studies/{study_id}/trials"): "list_trials",
    ("get", "/v1/studies/{study_id}/events"): "study_events",
    ("post", "/v1/studies/{study_id}/cancel"): "cancel_study",
    ("post", "/v1/architectures/analyze"): "analyze_architecture",
    ("get", "/v1/presets"): "list_presets",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
}


@pytest.fixture
def document(client) -> dict:
    return client.get("/openapi.json").json()


def schema_of(document: dict, name: str) -> dict:
    return document["components"]["schemas"][name]


class TestDocument:
    def test_every_public_operation_has_its_short_id_and_no_other_is_listed(self, document):
        found = {
            (method, path): operation["operationId"]
            for path, methods in document["paths"].items()
            for method, operation in methods.items()
        }
        assert found == PUBLIC_OPERATIONS

    def test_the_worker_routes_are_not_public(self, document):
        assert not any(path.startswith("/internal") for path in document["paths"])
        assert "WorkerToken" not in document["components"].get("securitySchemes", {})

    def test_responses_are_typed(self, document):
        def ok_schema(path: str, method: str) -> dict:
            response = document["paths"][path][method]["responses"]
            return response.get("200", response.get("201"))["content"]["application/json"]["schema"]

        assert ok_schema("/v1/architectures/analyze", "post") == {
            "$ref": "#/components/schemas/Analysis"
        }
        assert schema_of(document, "JobPublic")["properties"]["spec"]["$ref"].endswith("/JobSpec")
        preset = schema_of(document, "PresetPublic")["properties"]
        assert preset["job"]["$ref"].endswith("/JobSpec")
        assert preset["analysis"]["$ref"].endswith("/Analysis")
        assert "url" in schema_of(document, "CheckpointPublic")["required"]

    def test_the_download_is_binary_with_its_sha256_header(self, document):
        ok = document["paths"]["/v1/jobs/{job_id}/checkpoints/{name}"]["get"]["responses"]["200"]
        assert ok["content"] == {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
        }
        assert ok["headers"]["X-Checkpoint-SHA256"]["required"] is True

    def test_the_event_streams_name_each_event_and_its_data(self, document):
        ok = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
        events = ok["content"]["text/event-stream"]["schema"]["oneOf"]
        data = {
            event["properties"]["event"]["const"]: event["properties"]["data"]["contentSchema"]
            for event in events
        }
        assert data == {
            "status": {"$ref": "#/components/schemas/StatusEvent"},
            "progress": {"$ref": "#/components/schemas/BatchProgress"},
            "metrics": {"$ref": "#/components/schemas/EpochMetrics"},
        }
        for name in ("StatusEvent", "BatchProgress", "EpochMetrics", "StudyStatusEvent"):
            assert name in document["components"]["schemas"]
        assert "Last-Event-ID" in ok["description"]

    def test_the_limits_in_force_are_schema_bounds(self, document, settings: Settings):
        spec = schema_of(document, "JobSpec")["properties"]
        assert spec["epochs"]["maximum"] == settings.max_epochs
        assert spec["batch_size"]["maximum"] == settings.max_batch_size
        assert schema_of(document, "ConvLayer")["properties"]["out_channels"]["maximum"] == (
            settings.max_channels
        )
        model = schema_of(document, "ModelSpec")["properties"]
        strings = [b for b in model["preset"]["anyOf"] if b.get("type") == "string"]
        assert strings[0]["enum"] == sorted(PRESETS)
        arrays = [b for b in model["layers"]["anyOf"] if b.get("type") == "array"]
        assert arrays[0]["maxItems"] == settings.max_layers


class TestHttpDetails:
    def test_a_405_allows_every_method_of_the_path(self, client, auth):
        response = client.request("OPTIONS", "/v1/jobs", headers=auth)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, POST"
        response = client.put("/v1/jobs/job_x", headers=auth)
        assert response.headers["allow"] == "DELETE, GET"

    def test_a_worker_route_refuses_a_caller_without_the_token_before_reading_the_body(
        self, client
    ):
        response = client.post(
            "/internal/v1/jobs/job_x/epochs",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 401
        response = client.post(
            "/internal/v1/jobs/job_x/claim",
            content=b"{not json",
            headers={"content-type": "application/json", "Authorization": "Bearer wrong"},
        )
        assert response.status_code == 401

    def test_with_the_token_bad_json_is_a_422(self, client, worker_auth):
        response = client.post(
            "/internal/v1/jobs/job_x/epochs",
            content=b"{not json",
            headers={"content-type": "application/json", **worker_auth},
        )
        assert response.status_code == 422

    def test_an_unknown_preset_in_analyze_names_preset(self, client, auth):
        response = client.post(
            "/v1/architectures/analyze", json={"preset": "no-such"}, headers=auth
        )
        assert response.status_code == 422
        assert [e["field"] for e in response.json()["errors"]] == ["preset"]
