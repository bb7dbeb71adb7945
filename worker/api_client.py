"""The worker's side of the internal routes, over httpx with the worker token.

Posts are retried with exponential backoff while the API is unreachable or
answers 5xx, so a short API outage costs the job nothing: the API keys every
post by job, attempt and epoch, so a post repeated after a timeout changes nothing.
"""

import functools
import logging
import ssl
import threading
import time
from typing import Any

import certifi
import httpx
from pydantic import BaseModel

from shared.messages import AttemptAnswer, Claim, ClaimRequest

log = logging.getLogger(__name__)


class ApiRefused(Exception):
    """The API answered with a 4xx: retrying the same request cannot help."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class ApiUnreachable(Exception):
    pass


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle costs tens of milliseconds: once per process, not per job.
    return ssl.create_default_context(cafile=certifi.where())


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        retry_seconds: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url,
            timeout=10.0,
            transport=transport,
            verify=_tls_context(),
            headers={"Authorization": f"Bearer {token}"},
        )
        self.retry_seconds = retry_seconds
        # Posts go out one at a time, so the API sees epochs in order.
        self.lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, body: BaseModel, retry_seconds: float | None = None) -> Any:
        deadline = time.monotonic() + (
            self.retry_seconds if retry_seconds is None else retry_seconds
        )
        delay = 0.2
        with self.lock:
            while True:
                try:
                    response = self.http.post(
                        path,
                        content=body.model_dump_json(),
                        headers={"Content-Type": "application/json"},
                    )
                    if response.status_code < 500:
                        if response.is_error:
                            raise ApiRefused(response.status_code, _body_of(response))
                        return response.json()
                    problem = f"HTTP {response.status_code}"
                except httpx.TransportError as error:
                    problem = f"{type(error).__name__}: {error}"
                if time.monotonic() + delay > deadline:
                    raise ApiUnreachable(f"POST {path} failed until the deadline: {problem}")
                log.warning("POST %s failed (%s); retrying in %.1f s", path, problem, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def claim(self, job_id: str, worker: str) -> Claim:
        answer = self.post(f"/internal/v1/jobs/{job_id}/claim", ClaimRequest(worker=worker))
        return Claim.model_validate(answer)

    def attempt_post(
        self, job_id: str, route: str, body: BaseModel, retry_seconds: float | None = None
    ) -> AttemptAnswer:
        answer = self.post(f"/internal/v1/jobs/{job_id}/{route}", body, retry_seconds)
        return AttemptAnswer.model_validate(answer)


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]
