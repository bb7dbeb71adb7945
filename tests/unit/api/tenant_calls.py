"""Calls the public routes the way a tenant does, for route tests: a quick job submitted and
checked, and the fields a refused one names."""

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"
QUICK_JOB = {"epochs": 2, "data": {"train_subset": 256, "test_subset": 64}}


def submit(client: TestClient, headers: dict[str, str], body: dict | None = None) -> dict:
    response = client.post("/v1/jobs", json=QUICK_JOB if body is None else body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def error_fields(response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    return [error["field"] for error in response.json()["errors"]]
