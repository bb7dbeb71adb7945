"""The worker's side of the internal routes, over httpx with the worker token.

Posts are retried (by tenacity) with exponential backoff while the API is unreachable or
answers 5xx, so a short API outage costs the job nothing: the API keys every
post by job, attempt and epoch, so a post repeated after a timeout changes nothing.
A 4xx is an answer, not an outage, and is never retried. File transfers (checkpoint
uploads and downloads) are retried the same way, and streamed: never held in memory whole.
"""

import functools
import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import certifi
import httpx
from pydantic import BaseModel
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from shared.messages import AttemptAnswer, Claim, ClaimRequest
from shared.protocol import AttemptRoute, attempt_path, claim_path

log = logging.getLogger(__name__)


class ApiRefused(Exception):
    """The API answered with a 4xx: retrying the same request cannot help."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class ApiUnreachable(Exception):
    """Transport errors or 5xx answers until the retry deadline; the last one is the cause."""


class _ServerError(Exception):
    """A 5xx answer: the API is up but failing, so the post is retried like an outage."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status = response.status_code


# The back-off: 0.2 s, doubling, at most 10 s between tries.
FIRST_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 10.0


def _problem(error: BaseException | None) -> str:
    if isinstance(error, _ServerError) or error is None:
        return str(error)
    return f"{type(error).__name__}: {error}"


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "%s %s failed (%s); retrying in %.1f s",
        state.args[0],
        state.args[1],
        _problem(error),
        state.upcoming_sleep,
    )


Answer = TypeVar("Answer")
# Files go over the wire in pieces this large.
CHUNK_BYTES = 1024 * 1024
# A transfer's answer may wait on the API storing a large file (in a bucket, say).
TRANSFER_TIMEOUT = httpx.Timeout(10.0, read=120.0)


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
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        def client(timeout: httpx.Timeout | float) -> httpx.Client:
            return httpx.Client(
                base_url=base_url,
                timeout=timeout,
                transport=transport,
                verify=_tls_context(),
                headers={"Authorization": f"Bearer {token}"},
            )

        self.http = client(10.0)
        # Transfers have connections of their own and never take the lock: a long upload
        # must not hold up the heartbeats that keep the lease.
        self.transfers = client(TRANSFER_TIMEOUT)
        self.retry_seconds = retry_seconds
        self._sleep = sleep
        # Posts go out one at a time, so the API sees epochs in order.
        self.lock = threading.Lock()

    def close(self) -> None:
        self.http.close()
        self.transfers.close()

    def _retried(
        self,
        once: Callable[..., Answer],
        method: str,
        path: str,
        *args: Any,
        retry_seconds: float | None = None,
    ) -> Answer:
        """`once(method, path, *args)`, retried through outages and 5xx for `retry_seconds`
        (the client's default if None), never sleeping past that deadline."""
        # stop_before_delay, not stop_after_delay: a wait that would end past the deadline
        # is never begun, so callers (the heartbeat, the hand-back in its grace period) hear
        # back within the time they gave, give or take one request's timeout.
        retrying = Retrying(
            sleep=self._sleep,
            stop=stop_before_delay(self.retry_seconds if retry_seconds is None else retry_seconds),
            wait=wait_exponential(multiplier=FIRST_DELAY_SECONDS, max=MAX_DELAY_SECONDS),
            retry=retry_if_exception_type((httpx.TransportError, _ServerError)),
            before_sleep=_log_retry,
        )
        try:
            return retrying(once, method, path, *args)
        except RetryError as gave_up:
            last = gave_up.last_attempt.exception()
            raise ApiUnreachable(
                f"{method} {path} failed until the deadline: {_problem(last)}"
            ) from last

    def post(self, path: str, body: BaseModel, retry_seconds: float | None = None) -> Any:
        """The answer's JSON; retried through outages and 5xx (see _retried)."""
        with self.lock:
            return self._retried(self._post_once, "POST", path, body, retry_seconds=retry_seconds)

    def _post_once(self, _method: str, path: str, body: BaseModel) -> Any:
        response = self.http.post(
            path,
            content=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        _raise_for_status(response)
        return response.json()

    def put_file(self, path: str, file: Path, headers: dict[str, str]) -> None:
        """Uploads `file` as the body of a PUT, streamed with its Content-Length, and
        retried like a post; the file is opened afresh for every try."""
        self._retried(self._put_once, "PUT", path, file, headers)

    def _put_once(self, _method: str, path: str, file: Path, headers: dict[str, str]) -> None:
        with open(file, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            response = self.transfers.put(
                path,
                content=_chunks_of(source),
                headers={
                    **headers,
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
            )
        _raise_for_status(response)

    def get_file(self, path: str, target: Path) -> str:
        """Downloads the answer to a GET into `target`, which is replaced only once the
        download is complete; its SHA-256. Retried like a post."""
        return self._retried(self._get_once, "GET", path, target)

    def _get_once(self, _method: str, path: str, target: Path) -> str:
        partial = target.with_name(f".{target.name}.{os.getpid()}.download")
        digest = hashlib.sha256()
        try:
            with self.transfers.stream("GET", path) as response:
                if response.is_error:
                    response.read()
                    _raise_for_status(response)
                with open(partial, "wb") as file:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        digest.update(chunk)
                        file.write(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return digest.hexdigest()

    def claim(self, job_id: str, worker: str) -> Claim:
        answer = self.post(claim_path(job_id), ClaimRequest(worker=worker))
        return Claim.model_validate(answer)

    def attempt_post(
        self, job_id: str, route: AttemptRoute, body: BaseModel, retry_seconds: float | None = None
    ) -> AttemptAnswer:
        answer = self.post(attempt_path(job_id, route), body, retry_seconds)
        return AttemptAnswer.model_validate(answer)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 500:
        raise _ServerError(response)
    if response.is_error:
        raise ApiRefused(response.status_code, _body_of(response))


def _chunks_of(source: Any) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_BYTES):
        yield chunk


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]
