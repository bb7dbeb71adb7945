"""The job commands against an API played by httpx.MockTransport: what goes to stdout and
stderr, exit statuses, the watch's reconnections, listings page by page, checkpoints
checked before they are kept, and plots."""

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from cli.client import checkpoints, job_watch, jobs
from cli.client.http_client import ApiClient, ApiProblem, ApiUnreachable
from cli.client.job_watch import EXIT_CODES, PlainDisplay, follow
from cli.client.plots import Curves, plot
from cli.errors import CommandFailed
from cli.main import app, main, parse_args
from tests.unit.cli.jobs_json import checkpoint_json, job_json, row_json, spec_json

Handler = Callable[[httpx.Request], httpx.Response]


def api(handler: Handler) -> ApiClient:
    return ApiClient("http://tunelab.test", "tl_key", transport=httpx.MockTransport(handler))


def frames(*events: tuple[str, str, Any]) -> str:
    return "".join(
        f"id: {i}\nevent: {name}\ndata: {json.dumps(data)}\n\n" for i, name, data in events
    )


def progress(epoch: int, done: int, **fields: Any) -> dict[str, Any]:
    return {
        "phase": "train",
        "epoch": epoch,
        "batches_completed": done,
        "batches": 8,
        "images_per_second": 1000.0,
        "eta_seconds": 3.0,
        **fields,
    }


@pytest.fixture
def connected(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], None]:
    """Points the commands' `connect()` at a handler instead of TUNELAB_API_URL."""

    def use(handler: Handler) -> None:
        monkeypatch.setattr(jobs, "connect", lambda: api(handler))

    return use


def run(*args: str, stdin: str | None = None) -> Any:
    # Wide enough that no table cell wraps.
    return CliRunner().invoke(app, list(args), input=stdin, env={"COLUMNS": "200"})


class EventsApi:
    """A job whose event streams are given one by one; each GET of the job answers `job`."""

    def __init__(self, streams: list[str], job: dict[str, Any], rows: list[Any]) -> None:
        self.streams: Iterator[str] = iter(streams)
        self.job, self.rows = job, rows
        self.last_event_ids: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/events"):
            self.last_event_ids.append(request.headers.get("last-event-id"))
            body = next(self.streams)
            if body == "drop":
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        if path.endswith("/metrics"):
            return httpx.Response(200, json={"job_id": "job_1", "status": "x", "items": self.rows})
        return httpx.Response(200, json=self.job)


class TestWatch:
    def test_plain_lines_epochs_on_out_progress_on_stderr(self, capsys):
        stream = frames(
            ("1", "status", {"status": "queued"}),
            ("2", "status", {"status": "running"}),
            ("3", "progress", progress(0, 0)),
            ("4", "progress", progress(0, 4)),
            ("5", "metrics", row_json(0)),
            ("6", "progress", progress(1, 0)),
            ("7", "metrics", row_json(1)),
            ("8", "status", {"status": "succeeded"}),
        )
        handler = EventsApi([stream], job_json(), [row_json(0), row_json(1)])
        out = io.StringIO()
        with api(handler) as client:
            code = follow(client, "job_1", Console(file=out, width=300))
        assert code == 0
        lines = out.getvalue().splitlines()
        assert [line.split(":")[0] for line in lines] == [
            "epoch 0 (1 of 2)",
            "epoch 1 (2 of 2)",
            "job job_1 succeeded",
        ]
        # Within an epoch, one progress line until PLAIN_PROGRESS_SECONDS have passed.
        assert capsys.readouterr().err.splitlines() == [
            "job job_1 queued",
            "job job_1 running",
            "epoch 0: batch 0/8, 1,000 images/s, ETA 3s",
            "epoch 1: batch 0/8, 1,000 images/s, ETA 3s",
        ]

    def test_a_dropped_stream_resumes_after_the_last_event_and_prints_each_epoch_once(self, capsys):
        first = frames(("1", "status", {"status": "running"}), ("2", "metrics", row_json(0)))
        # An API that replays from the start despite Last-Event-ID: still printed once.
        second = frames(
            ("2", "metrics", row_json(0)),
            ("3", "metrics", row_json(1)),
            ("4", "status", {"status": "failed"}),
        )
        failed = job_json(status="failed", error={"type": "diverged", "message": "nan"})
        handler = EventsApi([first, "drop", second], failed, [row_json(0), row_json(1)])
        out = io.StringIO()
        with api(handler) as client:
            code = follow(client, "job_1", Console(file=out, width=300))
        assert code == EXIT_CODES["failed"] == 1
        assert handler.last_event_ids == [None, "2", "2"]
        lines = out.getvalue().splitlines()
        assert [line.split(" (")[0] for line in lines[:2]] == ["epoch 0", "epoch 1"]
        assert lines[2].startswith("job job_1 failed") and lines[2].endswith("diverged: nan")
        assert len(lines) == 3
        assert capsys.readouterr().err.count("the event stream dropped; reconnecting") == 2

    def test_a_stream_that_ends_before_the_job_does_is_reconnected(self):
        running = frames(("1", "status", {"status": "running"}))
        done = frames(("2", "status", {"status": "cancelled"}))
        handler = EventsApi([running, done], job_json(status="cancelled"), [])
        with api(handler) as client:
            code = follow(client, "job_1", Console(file=io.StringIO()))
        assert code == 3
        assert handler.last_event_ids == [None, "1"]

    def test_an_ended_job_prints_the_epochs_its_stream_did_not_replay(self):
        handler = EventsApi(
            [frames(("9", "status", {"status": "pruned"}))],
            job_json(status="pruned"),
            [row_json(0)],
        )
        out = io.StringIO()
        with api(handler) as client:
            code = follow(client, "job_1", Console(file=out, width=300))
        assert code == 4
        assert out.getvalue().splitlines()[0].startswith("epoch 0 (1 of 2): train_loss")

    def test_a_terminal_gets_a_bar_and_the_epoch_lines(self):
        stream = frames(
            ("1", "progress", progress(0, 4)),
            ("2", "metrics", row_json(0)),
            ("3", "status", {"status": "succeeded"}),
        )
        handler = EventsApi([stream], job_json(), [row_json(0)])
        out = io.StringIO()
        terminal = Console(file=out, width=200, force_terminal=True, markup=False, highlight=False)
        with api(handler) as client:
            assert follow(client, "job_1", terminal) == 0
        assert terminal.is_terminal
        text = out.getvalue()
        assert "epoch 0 (1 of 2): train_loss" in text
        assert "job job_1" in text and "succeeded" in text

    def test_plain_progress_is_shown_again_after_a_while(self):
        notes = io.StringIO()
        now = [0.0]
        display = PlainDisplay(
            "job_1", 2, Console(file=io.StringIO()), Console(file=notes), lambda: now[0]
        )
        for seconds, done in ((0.0, 1), (5.0, 2), (10.5, 3), (12.0, 4)):
            now[0] = seconds
            display.progress(progress(0, done))
        assert [line.split(",")[0] for line in notes.getvalue().splitlines()] == [
            "epoch 0: batch 1/8",
            "epoch 0: batch 3/8",
        ]

    def test_a_stream_silent_for_too_long_is_given_up(self, monkeypatch):
        monkeypatch.setattr(job_watch, "GIVE_UP_SECONDS", 0.0)
        handler = EventsApi(["drop", "drop", "drop"], job_json(status="running"), [])
        with api(handler) as client, pytest.raises(ApiUnreachable, match="peer closed"):
            follow(client, "job_1", Console(file=io.StringIO()))
        assert len(handler.last_event_ids) == 2

    def test_a_job_deleted_while_watched_is_one_line(self):
        stream = frames(
            ("1", "status", {"status": "running"}), ("2", "status", {"status": "unknown"})
        )
        handler = EventsApi([stream], job_json(status="running"), [])
        with api(handler) as client, pytest.raises(CommandFailed) as raised:
            follow(client, "job_1", Console(file=io.StringIO()))
        assert raised.value.message == "job job_1 was deleted while it was watched"

    def test_a_job_that_is_not_there_is_a_problem(self):
        answer = httpx.Response(404, json={"title": "Job not found", "detail": "no job x"})
        with api(lambda _: answer) as client, pytest.raises(ApiProblem, match="no job x"):
            follow(client, "x", Console(file=io.StringIO()))


class TestSubmit:
    def test_prints_only_the_id_and_adds_the_tags(self, connected, tmp_path):
        sent: list[Any] = []

        def handler(request: httpx.Request) -> httpx.Response:
            sent.append((request.method, request.url.path, json.loads(request.content)))
            return httpx.Response(201, json=job_json("job_9", status="queued"))

        connected(handler)
        (tmp_path / "spec.json").write_text(json.dumps({"epochs": 1, "tags": ["a"]}))
        result = run("submit", str(tmp_path / "spec.json"), "--tag", "b", "--tag", "a")
        assert (result.exit_code, result.stdout) == (0, "job_9\n")
        assert sent == [("POST", "/v1/jobs", {"epochs": 1, "tags": ["a", "b"]})]

    def test_an_idempotency_key_is_sent_only_when_given(self, connected):
        keys: list[str | None] = []

        def handler(request: httpx.Request) -> httpx.Response:
            keys.append(request.headers.get("idempotency-key"))
            return httpx.Response(201, json=job_json("job_9", status="queued"))

        connected(handler)
        assert run("submit", "-", "--idempotency-key", "k1", stdin="{}").exit_code == 0
        assert run("submit", "-", stdin="{}").exit_code == 0
        assert keys == ["k1", None]

    def test_reads_the_spec_from_stdin(self, connected):
        bodies: list[Any] = []

        def handler(request: httpx.Request) -> httpx.Response:
            bodies.append(json.loads(request.content))
            return httpx.Response(201, json=job_json("job_9", status="queued"))

        connected(handler)
        result = run("submit", "-", "--tag", "x", stdin='{"epochs": 2}')
        assert result.exit_code == 0, result.output
        assert bodies == [{"epochs": 2, "tags": ["x"]}]

    def test_with_watch_stdout_is_still_the_id_alone(self, connected):
        stream = frames(("1", "metrics", row_json(0)), ("2", "status", {"status": "failed"}))
        events = EventsApi([stream], job_json("job_9", status="failed"), [row_json(0)])

        def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                return httpx.Response(201, json=job_json("job_9", status="queued"))
            return events(request)

        connected(handler)
        result = CliRunner().invoke(app, ["submit", "-", "--watch"], input="{}")
        assert result.exit_code == 1
        assert result.stdout == "job_9\n"
        assert "epoch 0 (1 of 2)" in result.stderr
        assert "job job_9 failed" in result.stderr

    def test_a_spec_that_is_not_an_object_is_one_line(self, tmp_path, capsys):
        (tmp_path / "spec.json").write_text("[1]")
        assert main(["submit", str(tmp_path / "spec.json")]) == 1
        assert capsys.readouterr().err == (
            f"tunelab: {tmp_path / 'spec.json'} is not a job spec: a JSON object is\n"
        )


class TestJobs:
    def test_pages_until_the_limit_with_the_filters(self, connected):
        asked: list[dict[str, str]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            params = dict(request.url.params)
            asked.append(params)
            start = int(params.get("cursor", "0"))
            count = int(params["limit"])
            items = [job_json(f"job_{start + i}") for i in range(count)]
            return httpx.Response(200, json={"items": items, "next_cursor": str(start + count)})

        connected(handler)
        result = run("jobs", "--status", "succeeded", "--tag", "v2", "--limit", "130", "--json")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert len(document["items"]) == 130 and document["next_cursor"] == "130"
        assert asked == [
            {"order": "created_at", "status": "succeeded", "tag": "v2", "limit": "100"},
            {
                "order": "created_at",
                "status": "succeeded",
                "tag": "v2",
                "limit": "30",
                "cursor": "100",
            },
        ]

    def test_a_table_or_none(self, connected):
        pages = iter([[job_json()], []])

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"items": next(pages), "next_cursor": None})

        connected(handler)
        table = run("jobs", "--order", "test_accuracy")
        assert table.exit_code == 0 and "baseline-2" in table.stdout
        assert run("jobs", "--name", "nope").stdout == "no jobs match\n"

    def test_a_status_that_does_not_exist_exits_2(self):
        assert run("jobs", "--status", "done").exit_code == 2


class TestShowCancelDelete:
    def test_show_json_is_the_apis(self, connected):
        connected(lambda _: httpx.Response(200, json=job_json()))
        result = run("show", "job_1", "--json")
        assert json.loads(result.stdout) == job_json()

    def test_cancel_and_delete(self, connected):
        seen: list[tuple[str, str]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append((request.method, request.url.path))
            if request.method == "DELETE":
                return httpx.Response(204)
            return httpx.Response(200, json=job_json(status="cancelled"))

        connected(handler)
        assert run("cancel", "job_1").stdout == "job job_1 cancelled\n"
        assert run("delete", "job_1").stdout == "job job_1 deleted\n"
        assert seen == [("POST", "/v1/jobs/job_1/cancel"), ("DELETE", "/v1/jobs/job_1")]

    def test_deleting_a_running_job_is_the_problem_line(self, connected, capsys):
        problem = {
            "title": "Job cannot be deleted",
            "detail": "job job_1 is running; cancel it first",
        }
        connected(lambda _: httpx.Response(409, json=problem))
        assert main(["delete", "job_1"]) == 1
        assert capsys.readouterr().err == (
            "tunelab: Job cannot be deleted: job job_1 is running; cancel it first\n"
        )


class CheckpointApi:
    def __init__(self, payload: bytes, announced: str | None = None, listed: str | None = None):
        digest = hashlib.sha256(payload).hexdigest()
        self.payload = payload
        self.announced = announced or digest
        self.items = [
            checkpoint_json("job_1", 0, sha256=listed or digest, test_accuracy=0.9),
            checkpoint_json("job_1", 1, sha256=listed or digest, test_accuracy=0.95),
            checkpoint_json("job_1", 2, sha256=listed or digest, test_accuracy=0.95),
        ]
        self.downloads: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/checkpoints"):
            return httpx.Response(200, json={"items": self.items})
        self.downloads.append(request.url.path)
        return httpx.Response(
            200, content=self.payload, headers={"X-Checkpoint-SHA256": self.announced}
        )


class TestDownload:
    def test_the_newest_by_default_to_job_name_and_checked(self, connected, tmp_path):
        handler = CheckpointApi(b"weights" * 1000)
        connected(handler)
        result = run("download", "job_1", "-o", str(tmp_path))
        assert result.exit_code == 0, result.output
        target = tmp_path / "job_1-epoch-002.pt"
        assert result.stdout == f"{target}\n"
        assert target.read_bytes() == b"weights" * 1000
        assert handler.downloads == ["/v1/jobs/job_1/checkpoints/epoch-002.pt"]
        assert list(tmp_path.iterdir()) == [target]

    def test_best_and_epoch(self, connected, tmp_path):
        handler = CheckpointApi(b"w")
        connected(handler)
        assert run("download", "job_1", "--best", "-o", str(tmp_path / "b.pt")).exit_code == 0
        assert run("download", "job_1", "--epoch", "0", "-o", str(tmp_path / "e.pt")).exit_code == 0
        # Tied best accuracies: the first epoch that reached it.
        assert handler.downloads == [
            "/v1/jobs/job_1/checkpoints/epoch-001.pt",
            "/v1/jobs/job_1/checkpoints/epoch-000.pt",
        ]
        assert run("download", "job_1", "--epoch", "7").exit_code == 1
        assert run("download", "job_1", "--epoch", "0", "--best").exit_code == 2

    @pytest.mark.parametrize("wrong", ["announced", "listed"])
    def test_bytes_that_do_not_match_are_never_kept(self, connected, tmp_path, capsys, wrong):
        connected(CheckpointApi(b"weights", **{wrong: "f" * 64}))
        target = tmp_path / "x.pt"
        target.write_bytes(b"mine")
        assert main(["download", "job_1", "-o", str(target), "--force"]) == 1
        assert "SHA-256" in capsys.readouterr().err
        assert target.read_bytes() == b"mine"
        assert list(tmp_path.iterdir()) == [target]

    def test_an_existing_file_needs_force(self, connected, tmp_path):
        connected(CheckpointApi(b"weights"))
        (tmp_path / "x.pt").write_bytes(b"mine")
        result = run("download", "job_1", "-o", str(tmp_path / "x.pt"))
        assert result.exit_code == 1
        assert (tmp_path / "x.pt").read_bytes() == b"mine"
        assert run("download", "job_1", "-o", str(tmp_path / "x.pt"), "--force").exit_code == 0
        assert (tmp_path / "x.pt").read_bytes() == b"weights"

    def test_a_cached_copy_is_used_only_while_it_is_intact(self, tmp_path):
        handler = CheckpointApi(b"weights")
        with api(handler) as client:
            [checkpoint] = [c for c in handler.items if c["epoch"] == 1]
            first = checkpoints.cached(client, "job_1", checkpoint, tmp_path)
            again = checkpoints.cached(client, "job_1", checkpoint, tmp_path)
            first.write_bytes(b"planted")
            fetched = checkpoints.cached(client, "job_1", checkpoint, tmp_path)
        assert first == again == fetched == tmp_path / "job_1" / "epoch-001.pt"
        assert fetched.read_bytes() == b"weights"
        assert len(handler.downloads) == 2

    def test_a_url_to_another_host_is_not_followed(self):
        checkpoint = checkpoint_json("job_1", 0, url="https://elsewhere.test/steal")
        assert checkpoints.download_path("job_1", checkpoint) == (
            "/v1/jobs/job_1/checkpoints/epoch-000.pt"
        )

    def test_no_checkpoints_yet(self):
        with pytest.raises(CommandFailed, match="job job_1 has no checkpoints yet"):
            checkpoints.pick("job_1", [])


def colours_of(path: Path) -> int:
    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


class TestPlot:
    def test_learning_curves_of_two_jobs(self, tmp_path):
        output = tmp_path / "curves.png"
        rows = [row_json(0), row_json(1), row_json(2)]
        plot([Curves(job_json("job_1"), rows), Curves(job_json("job_2"), rows[:2])], output)
        with Image.open(output) as image:
            assert image.size == (1500, 400)
        assert colours_of(output) > 10

    def test_an_lr_range_test_and_a_training_job(self, tmp_path):
        output = tmp_path / "both.png"
        curve = {
            "points": [
                {"lr": 10 ** (-5 + i / 10), "loss": 2.3 - i / 40, "smoothed_loss": 2.3 - i / 45}
                for i in range(40)
            ],
            "suggested_lr": 1e-3,
            "min_loss_lr": 1e-2,
            "diverged_at_lr": None,
        }
        finder = job_json(
            "job_lr", spec=spec_json(kind="lr_range_test"), result={"lr_range_test": curve}
        )
        plot([Curves(finder, []), Curves(job_json(), [row_json(0)])], output)
        with Image.open(output) as image:
            assert image.size == (2000, 400)

    def test_nothing_to_plot(self, connected, tmp_path, capsys):
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/metrics"):
                return httpx.Response(200, json={"job_id": "job_1", "status": "q", "items": []})
            return httpx.Response(200, json=job_json(status="queued"))

        connected(handler)
        assert main(["plot", "job_1", "-o", str(tmp_path / "x.png")]) == 1
        err = capsys.readouterr().err
        assert "job job_1 has nothing to plot yet" in err
        assert "none of the jobs has an epoch or an LR range test to plot" in err
        assert not (tmp_path / "x.png").exists()


COMMANDS = [
    (["submit", "s.json", "--watch", "--tag", "a", "--tag", "b"], {"tags": ["a", "b"]}),
    (["watch", "job_1"], {"job_id": "job_1"}),
    (
        ["jobs", "--status", "running", "--tag", "t", "--order", "test_accuracy", "--limit", "5"],
        {"status": "running", "tag": "t", "order": "test_accuracy", "limit": 5},
    ),
    (["show", "job_1", "--json"], {"job_id": "job_1", "as_json": True}),
    (["cancel", "job_1"], {"job_id": "job_1"}),
    (["delete", "job_1"], {"job_id": "job_1"}),
    (["download", "job_1", "--epoch", "3", "-o", "x.pt"], {"epoch": 3, "best": False}),
    (["plot", "job_1", "job_2", "-o", "x.png"], {"job_ids": ["job_1", "job_2"]}),
    (["compare", "job_1", "job_2"], {"job_ids": ["job_1", "job_2"]}),
    (["predict", "job_1", "a.png", "b.png", "--checkpoint", "epoch-000.pt"], {"job_id": "job_1"}),
]


class TestCommandLine:
    @pytest.mark.parametrize(("argv", "params"), COMMANDS, ids=lambda v: " ".join(v)[:40])
    def test_every_job_command_parses(self, argv, params):
        parsed = vars(parse_args(argv))
        assert parsed["command"] == argv[0]
        # Typer hands repeated values over as a list or a tuple, by version.
        found = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in parsed.items()
        }
        assert {name: found.get(name) for name in params} == params

    @pytest.mark.parametrize("command", [argv[0] for argv, _ in COMMANDS])
    def test_every_job_command_has_help(self, command):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert f"tunelab {command}" in " ".join(result.output.split())

    def test_watch_and_submit_document_their_exit_statuses(self):
        for command in ("watch", "submit"):
            text = " ".join(run(command, "--help").output.split())
            assert "0 succeeded, 1 failed" in text and "3 cancelled, 4 pruned" in text

    @pytest.mark.parametrize(
        "argv",
        [["plot", "job_1"], ["download"], ["jobs", "--order", "best"], ["compare"]],
    )
    def test_a_wrong_command_line_exits_2(self, argv):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2

    def test_compare_needs_two_jobs(self):
        assert run("compare", "job_1").exit_code == 2
