"""Input a client controls that once answered 500 or held the API's resources: widths of
thousands of digits, a preset choice that is a list, a Last-Event-ID past any epoch; and the
event streams: a tenant's open streams limited, and a study's stream reading only what is
new on each poll."""

import asyncio
import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlmodel import Session, SQLModel

from api.core.db import make_engine
from api.core.models import EpochMetricRow, Job, TrialRow
from api.jobs.events import JobStream
from api.main import create_app
from api.studies.events import StreamState, study_events_since
from api.studies.scheduler import StudyScheduler
from api.web.errors import TooManyStreams
from api.web.sse import EventStreamResponse, StreamSlots
from cli.client.server_events import parse_events
from shared.settings import Settings
from tests.unit.api.recording_dispatcher import RecordingDispatcher
from tests.unit.api.tenant_calls import PROBLEM, error_fields, submit
from tests.unit.api.tenant_keys import TenantKeys
from tests.unit.api.worker_calls import WorkerCalls

# An integer JSON allows and Python parses, but whose square it will not print.
HUGE = "1" + "0" * 4000


def post_raw(client: TestClient, path: str, body: str, auth: dict[str, str]) -> Any:
    return client.post(path, content=body, headers={**auth, "content-type": "application/json"})


class TestHugeWidths:
    LAYERS = (
        '[{"type": "flatten"}, {"type": "linear", "out_features": HUGE}, '
        '{"type": "linear", "out_features": HUGE}]'
    ).replace("HUGE", HUGE)

    def test_a_job_with_them_is_a_422_naming_each(self, client, auth):
        response = post_raw(client, "/v1/jobs", f'{{"model": {{"layers": {self.LAYERS}}}}}', auth)
        fields = error_fields(response)
        assert "model.layers[1].out_features" in fields
        assert "model.layers[2].out_features" in fields
        assert "2147483647" in response.text

    def test_their_analysis_is_a_422_naming_each(self, client, auth):
        response = post_raw(
            client, "/v1/architectures/analyze", f'{{"layers": {self.LAYERS}}}', auth
        )
        assert "layers[1].out_features" in error_fields(response)


class TestPresetChoices:
    @pytest.mark.parametrize("choice", [["compact-8k"], {"name": "compact-8k"}])
    def test_a_list_or_object_is_a_422_naming_the_choices(self, client, auth, choice):
        body = {
            "space": {"model.preset": {"type": "categorical", "choices": ["compact-8k", choice]}}
        }
        response = client.post("/v1/studies", json=body, headers=auth)
        assert error_fields(response) == ['space["model.preset"].choices']


class TestLastEventId:
    @pytest.mark.parametrize("last_event_id", ["9" * 30 + ".4", "-" + "9" * 30 + ".1", "x.1"])
    def test_an_id_past_any_epoch_starts_from_the_beginning(
        self, client, auth, worker_auth, last_event_id
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        for epoch in range(2):
            worker.post_epoch(job["id"], attempt, epoch)
        worker.finish(job["id"], attempt)
        headers = {**auth, "Last-Event-ID": last_event_id}
        with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers) as stream:
            assert stream.status_code == 200
            body = "".join(stream.iter_text())
        events = list(parse_events(body.splitlines()))
        assert [e.data["epoch"] for e in events if e.event == "metrics"] == [0, 1]
        assert events[-1].event == "status" and events[-1].data["status"] == "succeeded"

    def test_an_id_of_ours_still_resumes_after_its_epoch(self):
        assert JobStream.resuming("2147483647.9").last_epoch == 2**31 - 1
        assert JobStream.resuming("4.12").last_epoch == 4
        assert JobStream.resuming("2147483648.1").last_epoch == -1


class RawStream:
    """One GET of an event stream, driven over ASGI as a server does, so that several stay
    open at once; `leave()` is the client going away."""

    def __init__(self, app: FastAPI, path: str, headers: dict[str, str]) -> None:
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.body = b""
        self._asked, self._gone = False, asyncio.Event()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status.set_result(message["status"])
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def leave(self) -> None:
        self._gone.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
def file_engine(tmp_path: Path) -> Iterator[Engine]:
    # Streams poll from several threads at once: a file, not the one shared in-memory
    # connection.
    engine = make_engine(f"sqlite:///{tmp_path}/streams.db")
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


class TestStreamLimit:
    LIMIT = 2

    def test_one_stream_more_than_the_limit_is_a_429_until_one_closes(
        self, settings: Settings, file_engine: Engine
    ):
        limited = settings.model_copy(
            update={"max_streams_per_tenant": self.LIMIT, "events_keepalive_seconds": 0.2}
        )
        app = create_app(limited, engine=file_engine, dispatcher=RecordingDispatcher())
        client = TestClient(app)
        keys = TenantKeys(file_engine)
        auth, other = keys.headers("acme"), keys.headers("globex")
        job = submit(client, auth)["id"]
        theirs = submit(client, other)["id"]
        path = f"/v1/jobs/{job}/events"

        async def scenario() -> None:
            open_streams = [RawStream(app, path, auth) for _ in range(self.LIMIT)]
            statuses = [await asyncio.wait_for(s.status, 10) for s in open_streams]
            assert statuses == [200] * self.LIMIT
            assert app.state.stream_slots.held(_tenant_of(file_engine, job)) == self.LIMIT

            refused = RawStream(app, path, auth)
            assert await asyncio.wait_for(refused.status, 10) == 429
            await asyncio.wait_for(refused.task, 10)
            problem = json.loads(refused.body)
            assert (problem["open_streams"], problem["limit"]) == (self.LIMIT, self.LIMIT)
            assert "too-many-streams" in problem["type"]

            # Another tenant's streams are counted apart.
            their_stream = RawStream(app, f"/v1/jobs/{theirs}/events", other)
            assert await asyncio.wait_for(their_stream.status, 10) == 200

            await open_streams[0].leave()
            again = RawStream(app, path, auth)
            assert await asyncio.wait_for(again.status, 10) == 200
            for stream in [*open_streams[1:], their_stream, again]:
                await stream.leave()

        asyncio.run(scenario())
        assert app.state.stream_slots.held(_tenant_of(file_engine, job)) == 0

    def test_the_refusal_is_documented_problem_json(self, settings, engine, dispatcher):
        app = create_app(
            settings.model_copy(update={"max_streams_per_tenant": 1}),
            engine=engine,
            dispatcher=dispatcher,
        )
        client, keys = TestClient(app), TenantKeys(engine)
        auth = keys.headers("acme")
        job = submit(client, auth)["id"]
        tenant = _tenant_of(engine, job)
        give_back = app.state.stream_slots.take(tenant, 1)  # a stream held open elsewhere
        refused = client.get(f"/v1/jobs/{job}/events", headers=auth)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == PROBLEM
        assert int(refused.headers["Retry-After"]) >= 1
        give_back()


class TestStreamSlots:
    def test_a_slot_is_given_back_once(self):
        slots = StreamSlots()
        give_back = slots.take("acme", 1)
        with pytest.raises(TooManyStreams):
            slots.take("acme", 1)
        give_back()
        give_back()
        assert slots.held("acme") == 0
        slots.take("acme", 1)
        assert slots.held("acme") == 1

    def test_a_response_never_sent_gives_its_slot_back(self):
        slots = StreamSlots()

        async def nothing() -> Any:
            yield ""

        response = EventStreamResponse(nothing(), slots.take("acme", 1))
        assert slots.held("acme") == 1
        del response
        gc.collect()
        assert slots.held("acme") == 0


def _tenant_of(engine: Engine, job_id: str) -> str:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.tenant_id


class LoadCounter:
    """Counts the rows of each table that the ORM loads."""

    def __init__(self) -> None:
        self.loaded: dict[str, int] = {}
        self.tables = (EpochMetricRow, TrialRow, Job)

    def __enter__(self) -> "LoadCounter":
        for table in self.tables:
            event.listen(table, "load", self._count)
        return self

    def __exit__(self, *_: object) -> None:
        for table in self.tables:
            event.remove(table, "load", self._count)

    def _count(self, target: Any, _context: Any) -> None:
        name = type(target).__name__
        self.loaded[name] = self.loaded.get(name, 0) + 1

    def since(self, before: dict[str, int]) -> dict[str, int]:
        return {
            name: count - before.get(name, 0)
            for name, count in self.loaded.items()
            if count != before.get(name, 0)
        }


class TestStudyStreamReads:
    def test_each_poll_reads_only_what_is_new(
        self, client, auth, worker_auth, engine, dispatcher, settings
    ):
        body = {
            "base": {"epochs": 3, "data": {"train_subset": 256, "test_subset": 64}},
            "space": {"batch_size": {"type": "categorical", "choices": [64, 128]}},
            "sampler": {"name": "grid"},
            "max_trials": 2,
            "max_parallel_trials": 2,
        }
        study_id = client.post("/v1/studies", json=body, headers=auth).json()["id"]
        StudyScheduler(engine, dispatcher, settings).run_once()
        worker = WorkerCalls(client, worker_auth)
        first, second = dispatcher.sent
        attempts = {job_id: worker.attempt(job_id) for job_id in (first, second)}
        for job_id in (first, second):
            for epoch in range(2):
                worker.post_epoch(job_id, attempts[job_id], epoch, val_accuracy=0.9)
        sent = StreamState()

        def poll() -> tuple[list[tuple[str, dict]], dict[str, int]]:
            before = dict(counter.loaded)
            frames, _ = study_events_since(engine, study_id, sent)
            events = [(e.event, e.data) for e in parse_events("".join(frames).splitlines())]
            return events, counter.since(before)

        with LoadCounter() as counter:
            events, loaded = poll()
            assert loaded["EpochMetricRow"] == 4
            assert [name for name, _ in events].count("epoch") == 2

            events, loaded = poll()
            assert events == [] and "EpochMetricRow" not in loaded

            worker.post_epoch(first, attempts[first], 2, val_accuracy=0.9)
            events, loaded = poll()
            assert loaded["EpochMetricRow"] == 1
            (name, trial), *_ = events
            assert name == "epoch" and trial["epochs_completed"] == 3
            assert trial["value"] == pytest.approx(0.9)

            for job_id in (first, second):
                worker.finish(job_id, attempts[job_id])
            events, loaded = poll()
            assert [name for name, _ in events] == ["trial_finished", "trial_finished"]
            # Both trials ended and were told: never read again.
            events, loaded = poll()
            assert events == [] and loaded == {}
