"""The API's internal routes as a worker's task sees them, scripted per test: what a claim
grants, and which routes fail."""

from typing import Any

import httpx
import pytest

from shared.messages import Claim
from tests.unit.worker.small_jobs import small_job
from worker import tasks
from worker.api_client import ApiClient

JOB_ID = "job_1"


class InternalApi:
    """The internal routes: a claim is granted `granted`, every other post answered 200,
    except the routes in `failing`, which answer (or raise) what they map to."""

    def __init__(self, granted: Claim | None = None, **failing: httpx.Response | Exception) -> None:
        self.granted = granted
        self.failing = failing
        self.routes: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        route = request.url.path.rsplit("/", 1)[1]
        self.routes.append(route)
        failure = self.failing.get(route)
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return failure
        if route == "claim":
            assert self.granted is not None
            return httpx.Response(200, json=self.granted.model_dump(mode="json"))
        return httpx.Response(200, json={"cancelled": False})


def serve(monkeypatch: pytest.MonkeyPatch, api: InternalApi) -> None:
    """The task's client talks to `api`, and gives up on an outage at once (the deadline
    is shorter than the first back-off)."""

    def client(base_url: str, token: str) -> ApiClient:
        return ApiClient(base_url, token, retry_seconds=0.01, transport=httpx.MockTransport(api))

    monkeypatch.setattr(tasks, "ApiClient", client)


def claim_of(**fields: Any) -> Claim:
    spec = small_job(**{"epochs": 1, "data": {"train_subset": 128}, **fields})
    return Claim(job_id=JOB_ID, attempt=1, lease_token="t" * 32, lease_seconds=60, spec=spec)
