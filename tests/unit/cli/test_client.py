"""The API client of the `tunelab` commands, against httpx.MockTransport: problems and an
unreachable API as one line, 429s retried, Server-Sent Events parsed."""

from collections.abc import Callable

import httpx
import pytest

from cli.client.http_client import ApiClient, ApiProblem, ApiUnreachable
from cli.client.server_events import ServerEvent, parse_events

PROBLEM = {"content-type": "application/problem+json"}


def client(handler: Callable[[httpx.Request], httpx.Response]) -> ApiClient:
    return ApiClient("http://tunelab.test/", "tl_key", transport=httpx.MockTransport(handler))


def problem(status: int, title: str, detail: str, **extra) -> httpx.Response:
    body = {"type": "urn:x", "title": title, "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers=PROBLEM)


class TestAnswers:
    def test_the_key_is_sent_and_the_json_answered(self):
        seen = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append((request.url.path, request.headers["authorization"]))
            return httpx.Response(200, json={"id": "stu_1"})

        with client(handler) as api:
            assert api.get("/v1/studies/stu_1") == {"id": "stu_1"}
        assert seen == [("/v1/studies/stu_1", "Bearer tl_key")]

    def test_a_problem_is_its_title_and_detail(self):
        with client(lambda _: problem(404, "Study not found", "no study x")) as api:
            with pytest.raises(ApiProblem) as raised:
                api.get("/v1/studies/x")
        assert (raised.value.message, raised.value.status) == (
            "Study not found: no study x",
            404,
        )

    def test_a_validation_problem_names_each_field(self):
        errors = [
            {"field": 'space["optimizer.lr"]', "message": "low (1.0) must be below high (0.1)"},
            {"field": "max_trials", "message": "at most 200"},
        ]
        answer = problem(422, "The request is not valid", "2 problem(s)", errors=errors)
        with client(lambda _: answer) as api, pytest.raises(ApiProblem) as raised:
            api.post("/v1/studies", {})
        assert raised.value.message == (
            'The request is not valid: space["optimizer.lr"]: low (1.0) must be below high '
            "(0.1); max_trials: at most 200"
        )

    def test_an_answer_that_is_not_a_problem_is_still_one_line(self):
        answer = httpx.Response(502, text="<html>\n<b>Bad gateway</b>\n</html>")
        with client(lambda _: answer) as api, pytest.raises(ApiProblem) as raised:
            api.get("/v1/studies")
        assert raised.value.message == (
            "the API answered 502 Bad Gateway: <html> <b>Bad gateway</b> </html>"
        )

    def test_an_unreachable_api_names_its_address(self):
        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

        with client(refuse) as api, pytest.raises(ApiUnreachable) as raised:
            api.get("/v1/studies")
        assert raised.value.message == (
            "cannot reach the API at http://tunelab.test: [Errno 111] Connection refused"
        )

    def test_a_get_answered_429_is_tried_again_after_retry_after(self):
        answers = iter(
            [
                problem(429, "Too many requests", "retry in 0 s"),
                httpx.Response(200, json={"items": []}),
            ]
        )

        def handler(_request: httpx.Request) -> httpx.Response:
            answer = next(answers)
            if answer.status_code == 429:
                answer.headers["Retry-After"] = "0"
            return answer

        with client(handler) as api:
            assert api.get("/v1/studies") == {"items": []}

    def test_a_429_that_persists_is_reported(self):
        def handler(_request: httpx.Request) -> httpx.Response:
            answer = problem(429, "Too many requests", "at most 600 requests a minute")
            answer.headers["Retry-After"] = "0"
            return answer

        with client(handler) as api, pytest.raises(ApiProblem) as raised:
            api.get("/v1/studies")
        assert raised.value.status == 429


class TestEvents:
    def test_frames_are_dispatched_at_blank_lines(self):
        lines = [
            ": a comment",
            "event: trial_started",
            'data: {"number": 0}',
            "",
            "event: status",
            'data: {"status":',
            'data:  "succeeded"}',
            "",
        ]
        assert list(parse_events(lines)) == [
            ServerEvent("trial_started", {"number": 0}),
            ServerEvent("status", {"status": "succeeded"}),
        ]

    def test_ids_hold_until_replaced_and_keep_alives_are_no_events(self):
        lines = [
            "retry: 2000",
            "",
            "id: 7",
            "event: status",
            'data: {"status": "running"}',
            "",
            ": keep-alive",
            "",
            "event: progress",
            'data: {"batches": 8}',
            "",
            "id: 9",
            "event: status",
            "data: done",
        ]
        assert list(parse_events(lines)) == [
            ServerEvent("status", {"status": "running"}, "7"),
            ServerEvent("progress", {"batches": 8}, "7"),
            ServerEvent("status", "done", "9"),
        ]

    def test_a_stream_is_read_to_its_end(self):
        body = 'event: epoch\ndata: {"number": 1}\n\nevent: status\ndata: {"status": "failed"}\n\n'

        def handler(_request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

        with client(handler) as api:
            events = list(api.events("/v1/studies/stu_1/events"))
        assert [e.event for e in events] == ["epoch", "status"]

    def test_a_stream_refused_is_a_problem(self):
        with client(lambda _: problem(404, "Study not found", "no study x")) as api:
            with pytest.raises(ApiProblem, match="no study x"):
                list(api.events("/v1/studies/x/events"))
