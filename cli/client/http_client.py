"""The API's client for the `tunelab` client commands: httpx, the base URL from
TUNELAB_API_URL and the tenant key from TUNELAB_API_KEY.

Whatever goes wrong becomes one line for the user: a problem+json answer as its title and
detail (and each bad field of a validation error), an unreachable API as its address and the
reason. A GET answered 429 is tried again after its Retry-After, a few times. An event stream
is read through cli.client.server_events.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
)

from cli.client.server_events import ServerEvent, parse_events
from cli.errors import CommandFailed
from cli.settings import load_settings, require

TIMEOUT_SECONDS = 30.0
# A 429's Retry-After is honoured up to this long, this many times, then reported.
MAX_RETRY_AFTER_SECONDS = 30.0
RATE_LIMIT_ATTEMPTS = 4


class ApiProblem(CommandFailed):
    """The API answered with an error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiUnreachable(CommandFailed):
    """No answer: the API is down, at another address, or the connection dropped."""


def job_path(job_id: str, *rest: str) -> str:
    """`/v1/jobs/{id}/…`."""
    return _resource_path("jobs", job_id, rest)


def study_path(study_id: str, *rest: str) -> str:
    """`/v1/studies/{id}/…`."""
    return _resource_path("studies", study_id, rest)


def _resource_path(collection: str, resource_id: str, rest: tuple[str, ...]) -> str:
    # The id quoted: an id is opaque, never part of a path of ours.
    return "/".join([f"/v1/{collection}/{quote(resource_id, safe='')}", *rest])


def problem_line(response: httpx.Response) -> str:
    """An error answer as one line: `Study not found: no study 01J…`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "title" not in body:
        text = " ".join(response.text.split())[:200]
        return f"the API answered {response.status_code} {response.reason_phrase}" + (
            f": {text}" if text else ""
        )
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        # A validation problem: each field and what is allowed says more than the count.
        detail = "; ".join(f"{e.get('field', '?')}: {e.get('message', '')}" for e in errors)
    else:
        detail = str(body.get("detail") or "")
    title = str(body["title"])
    return f"{title}: {detail}" if detail else title


def _rate_limited(response: httpx.Response) -> bool:
    return response.status_code == 429 and "Retry-After" in response.headers


def _retry_after(state: RetryCallState) -> float:
    response = state.outcome.result() if state.outcome else None
    try:
        seconds = float(response.headers["Retry-After"]) if response is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class ApiClient:
    """The tenant's view of the API. Methods answer the JSON body or raise ApiProblem /
    ApiUnreachable."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        transport: httpx.BaseTransport | None = None,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.http.close()

    def get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(RATE_LIMIT_ATTEMPTS),
            wait=_retry_after,
            retry=retry_if_result(_rate_limited),
            # The last 429 is answered, then reported like any other problem.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        response = retrying(self._send, "GET", path, params=params)
        return self._answer(response)

    def post(self, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        return self._answer(self._send("POST", path, json=body, headers=headers))

    def create(self, path: str, body: Any, idempotency_key: str | None = None) -> Any:
        """POSTs a new job or study; with a key, the same key and body create one, never two
        (a retry is answered the first one)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.post(path, body, headers=headers)

    def delete(self, path: str) -> Any:
        return self._answer(self._send("DELETE", path))

    def events(self, path: str, last_event_id: str | None = None) -> Iterator[ServerEvent]:
        """A Server-Sent Events stream, until the server ends it; `last_event_id` resumes
        after that event. A stream can be quiet for as long as an epoch takes, so reading
        never times out."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else None
        with self.streamed(path, headers=headers, read_timeout=None) as response:
            yield from parse_events(response.iter_lines())

    @contextmanager
    def streamed(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = TIMEOUT_SECONDS,
    ) -> Iterator[httpx.Response]:
        """A GET whose body is read inside the block (`iter_bytes()`, `iter_lines()`), never
        held whole in memory; an error answer raises ApiProblem before the block runs, and a
        connection lost while reading raises ApiUnreachable."""
        timeout = httpx.Timeout(TIMEOUT_SECONDS, read=read_timeout)
        try:
            with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    self._answer(response)
                yield response
        except httpx.TransportError as error:
            raise self._unreachable(error) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise self._unreachable(error) from None

    def _answer(self, response: httpx.Response) -> Any:
        if not response.is_success:
            raise ApiProblem(problem_line(response), response.status_code)
        # A 204 (a deletion) has no body to decode.
        return response.json() if response.content else None

    def _unreachable(self, error: httpx.TransportError) -> ApiUnreachable:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return ApiUnreachable(f"cannot reach the API at {self.base_url}: {reason}")


def connect() -> ApiClient:
    """A client for TUNELAB_API_URL with TUNELAB_API_KEY (which must be set)."""
    settings = load_settings()
    require(settings, "api_key")
    return ApiClient(str(settings.api_url), settings.api_key)
