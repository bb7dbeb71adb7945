"""`tunelab watch`: a job followed through its Server-Sent Events until it ends.

Where things go, so that scripts can read the output:

- a line per epoch, then one summary line, on the watch's own stream (stdout for `watch`;
  stderr for `submit --watch`, whose stdout is the job id alone);
- progress within the epoch: when that stream is a terminal, a bar on it (batches,
  images/s, ETA) with status changes above it; otherwise plain lines on stderr, a status
  change each and a progress line when an epoch begins and then at most every
  PLAIN_PROGRESS_SECONDS, so a log stays readable.

A stream that drops (the API restarting) is reconnected with Last-Event-ID, so it resumes
after the last event seen; an epoch is printed once, whatever is replayed. The exit status
says how the job ended (EXIT_CODES).
"""

import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from cli.client.formatting import console, format_seconds, state_line
from cli.client.http_client import ApiClient, ApiProblem, ApiUnreachable, job_path
from cli.client.job_views import (
    epoch_line,
    progress_line,
    progress_title,
    summary_line,
)
from cli.client.server_events import ServerEvent
from cli.errors import CommandFailed

# How a watch exits; 2 stays the exit status of a wrong command line or setting.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3, "pruned": 4}
EXIT_HELP = (
    "Exit status once the job ends: 0 succeeded, 1 failed (or the command itself did, said in "
    "a line on stderr), 3 cancelled, 4 pruned by its study; 2 a wrong command line or setting."
)
FINISHED = frozenset(EXIT_CODES)
# How long a watch keeps reconnecting without hearing one event: an API restart takes a
# few seconds, a redeploy maybe a minute.
GIVE_UP_SECONDS = 90.0
PLAIN_PROGRESS_SECONDS = 10.0
# Answers of a proxy or load balancer while the API restarts behind it.
RESTARTING = frozenset({502, 503, 504})


def exit_code(status: str) -> int:
    return EXIT_CODES.get(status, 1)


class Display(Protocol):
    def status(self, status: str) -> None: ...

    def progress(self, progress: Mapping[str, Any]) -> None: ...

    def epoch(self, row: Mapping[str, Any]) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class PlainDisplay:
    """Lines only: epochs on `out`, status changes and progress on `notes`."""

    def __init__(
        self, job_id: str, epochs: int | None, out: Console, notes: Console, clock: Any = None
    ) -> None:
        self.job_id, self.epochs, self.out, self.notes = job_id, epochs, out, notes
        self.clock = clock or time.monotonic
        self.shown: tuple[Any, Any] | None = None
        self.shown_at = 0.0

    def status(self, status: str) -> None:
        self.notes.print(state_line("job", self.job_id, status), soft_wrap=True)

    def progress(self, progress: Mapping[str, Any]) -> None:
        now = self.clock()
        where = (progress.get("phase"), progress.get("epoch"))
        if where == self.shown and now - self.shown_at < PLAIN_PROGRESS_SECONDS:
            return
        self.shown, self.shown_at = where, now
        self.notes.print(progress_line(progress), soft_wrap=True)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.out.print(epoch_line(row, self.epochs), soft_wrap=True)

    def note(self, text: str) -> None:
        self.notes.print(text, soft_wrap=True)

    def close(self) -> None:
        pass


class BarDisplay:
    """A rich bar within the epoch on a terminal; lines print above it."""

    def __init__(self, job_id: str, epochs: int | None, out: Console) -> None:
        self.job_id, self.epochs, self.out = job_id, epochs, out
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("batches  {task.fields[speed]}  {task.fields[eta]}"),
            console=out,
            transient=True,
        )
        self.task: TaskID | None = None
        self.bar.start()

    def status(self, status: str) -> None:
        self.out.print(state_line("job", self.job_id, status), soft_wrap=True)

    def progress(self, progress: Mapping[str, Any]) -> None:
        speed = progress.get("images_per_second")
        eta = progress.get("eta_seconds")
        fields = {
            "description": progress_title(progress),
            "total": progress.get("batches"),
            "completed": progress.get("batches_completed", 0),
            "speed": f"{speed:,.0f} images/s" if speed else "",
            "eta": "" if eta is None else f"ETA {format_seconds(eta)}",
        }
        if self.task is None:
            self.task = self.bar.add_task(**fields)
        else:
            self.bar.update(self.task, **fields)

    def epoch(self, row: Mapping[str, Any]) -> None:
        if self.task is not None:
            # The epoch's last progress report may come after its metrics, or never.
            total = self.bar.tasks[0].total
            self.bar.update(self.task, completed=total, speed="", eta="")
        self.out.print(epoch_line(row, self.epochs), soft_wrap=True)

    def note(self, text: str) -> None:
        self.out.print(text, soft_wrap=True)

    def close(self) -> None:
        self.bar.stop()


class Watch:
    """One job's events, played onto a display; what was shown survives reconnections."""

    def __init__(self, job_id: str, display: Display) -> None:
        self.job_id, self.display = job_id, display
        self.last_event_id: str | None = None
        self.status: str | None = None
        self.printed: set[int] = set()
        # Events since the last (re)connection, and since when none came: a stream that
        # gives events between drops is alive, however often it drops.
        self.fresh_events = 0
        self.silent_since: float | None = None

    def play(self, events: Iterable[ServerEvent]) -> str | None:
        """Shows the events; the job's final status once it ended, else None."""
        for event in events:
            self.fresh_events += 1
            if event.id is not None:
                self.last_event_id = event.id
            data = event.data if isinstance(event.data, Mapping) else {}
            if event.event == "status" and isinstance(data.get("status"), str):
                status = data["status"]
                if status in FINISHED:
                    return status
                if status == "unknown":
                    raise CommandFailed(f"job {self.job_id} was deleted while it was watched")
                if status != self.status:
                    self.status = status
                    self.display.status(status)
            elif event.event == "progress":
                self.display.progress(data)
            elif event.event == "metrics":
                self.metrics(data)
        return None

    def metrics(self, row: Mapping[str, Any]) -> None:
        epoch = row.get("epoch")
        if isinstance(epoch, int) and epoch not in self.printed:
            self.printed.add(epoch)
            self.display.epoch(row)


def _restarting(error: BaseException) -> bool:
    if isinstance(error, ApiUnreachable):
        return True
    return isinstance(error, ApiProblem) and error.status in RESTARTING


def follow(client: ApiClient, job_id: str, out: Console, bar: bool | None = None) -> int:
    """Follows the job until it ends and prints its summary line on `out`; its exit status
    (EXIT_CODES). `bar`: a progress bar on `out`, by default when `out` is a terminal."""
    job = client.get(job_path(job_id))
    epochs = (job.get("progress") or {}).get("epochs")
    use_bar = out.is_terminal if bar is None else bar
    display: Display
    if use_bar:
        display = BarDisplay(job["id"], epochs, out)
    else:
        display = PlainDisplay(job["id"], epochs, out, console(stderr=True))
    watch = Watch(job["id"], display)

    def reconnecting(_state: RetryCallState) -> None:
        display.note("tunelab: the event stream dropped; reconnecting")

    def given_up(_state: RetryCallState) -> bool:
        now = time.monotonic()
        if watch.fresh_events or watch.silent_since is None:
            # It was alive until it dropped: the silence starts now.
            watch.fresh_events, watch.silent_since = 0, now
        return now - watch.silent_since > GIVE_UP_SECONDS

    retrying = Retrying(
        stop=given_up,
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception(_restarting),
        before_sleep=reconnecting,
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                events = client.events(job_path(job_id, "events"), watch.last_event_id)
                watch.status = watch.play(events) or watch.status
                if watch.status not in FINISHED:
                    raise ApiUnreachable(f"the event stream of job {job_id} ended early")
        final = client.get(job_path(job_id))
        # Epochs the stream did not replay (a job that had ended before the watch began).
        for row in client.get(job_path(job_id, "metrics"))["items"]:
            watch.metrics(row)
    finally:
        display.close()
    out.print(summary_line(final), soft_wrap=True)
    return exit_code(final["status"])
