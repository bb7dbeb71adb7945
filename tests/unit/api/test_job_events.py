"""A job's event stream: ids, resuming after Last-Event-ID, status changes, progress, and the
keep-alive of a quiet stream."""

import asyncio

from api.jobs.events import JobStream, job_events_since
from api.web.sse import KEEPALIVE, polled_stream
from cli.client.server_events import parse_events
from tests.unit.api.tenant_calls import submit
from tests.unit.api.worker_calls import PROGRESS, WorkerCalls


def events_of(frames: list[str]) -> list[tuple[str, dict]]:
    return [(event.event, event.data) for event in parse_events("".join(frames).splitlines())]


def ids_of(frames: list[str]) -> list[str]:
    return [line.removeprefix("id: ") for f in frames for line in f.splitlines() if "id: " in line]


class TestJobEvents:
    def test_a_job_told_from_queued_to_its_end(self, client, auth, worker_auth, engine):
        job = submit(client, auth)
        worker, stream = WorkerCalls(client, worker_auth), JobStream()
        frames, ended = job_events_since(engine, job["id"], stream)
        assert events_of(frames) == [("status", {"status": "queued", "error": None})]
        assert not ended

        attempt = worker.attempt(job["id"])
        worker.heartbeat(job["id"], attempt, PROGRESS)
        frames, _ = job_events_since(engine, job["id"], stream)
        (status, running), (progress, now) = events_of(frames)
        assert (status, running["status"]) == ("status", "running")
        assert progress == "progress"
        assert (now["batches_completed"], now["batches"], now["phase"]) == (3, 8, "train")

        # Nothing new: nothing sent.
        assert job_events_since(engine, job["id"], stream) == ([], False)

        worker.post_epoch(job["id"], attempt, 0)
        worker.finish(job["id"], attempt)
        frames, ended = job_events_since(engine, job["id"], stream)
        assert [name for name, _ in events_of(frames)] == ["metrics", "status"]
        assert events_of(frames)[-1][1] == {"status": "succeeded", "error": None}
        assert ended
        assert ids_of(frames) == ["0.4", "0.5"]

    def test_a_reconnect_resumes_after_the_last_event_id(self, client, auth, worker_auth, engine):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        for epoch in range(3):
            worker.post_epoch(job["id"], attempt, epoch)
        frames, _ = job_events_since(engine, job["id"], JobStream.resuming("0.7"))
        epochs = [data["epoch"] for name, data in events_of(frames) if name == "metrics"]
        assert epochs == [1, 2]
        # An id this service did not send starts over.
        frames, _ = job_events_since(engine, job["id"], JobStream.resuming("garbage"))
        epochs = [data["epoch"] for name, data in events_of(frames) if name == "metrics"]
        assert epochs == [0, 1, 2]

    def test_the_stream_of_a_deleted_job_ends(self, client, auth, engine):
        frames, ended = job_events_since(engine, "job_gone", JobStream())
        assert events_of(frames) == [("status", {"status": "unknown", "error": None})]
        assert ended


class QuietClient:
    """A request whose client stays connected."""

    async def is_disconnected(self) -> bool:
        return False


def test_a_quiet_stream_sends_keep_alive_comments_then_ends():
    polls = iter([([], False)] * 4 + [(["event: status\n\n"], True)])

    async def collect() -> list[str]:
        stream = polled_stream(QuietClient(), lambda: next(polls), keepalive_seconds=0.01)  # type: ignore[arg-type]
        return [chunk async for chunk in stream]

    chunks = asyncio.run(collect())
    assert chunks[0].startswith("retry: ")
    assert chunks[-1] == "event: status\n\n"
    assert KEEPALIVE in chunks
