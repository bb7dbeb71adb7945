"""What runs inside the processes the MNIST preparation tests start.

The 'spawn' start method imports this module afresh in each child, so it stays light: no
torch, no pytest, nothing that downloads.
"""

import logging
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

from worker.mnist_files import (
    MNIST_MD5,
    DataPreparationError,
    Source,
    ensure_mnist,
    preparation_lock,
)

# The longest any step may take before a test calls it stuck.
DEADLINE = 60.0


@dataclass(frozen=True)
class CountingSource:
    """Copies the stand-in files in `template` into the folder it is asked to fill, and adds
    a line to `calls` each time, so that calls from any process can be counted.

    With `started` and `release`, it says it has begun and waits to be let go, holding the
    preparation open while a test looks at the other process.
    """

    template: Path
    calls: Path
    started: Event | None = None
    release: Event | None = None

    def __call__(self, target: Path) -> None:
        with self.calls.open("a") as calls:
            calls.write(f"{os.getpid()}\n")
        if self.started is not None:
            self.started.set()
        if self.release is not None and not self.release.wait(DEADLINE):
            raise TimeoutError("the test never let the preparation go on")
        for name in MNIST_MD5:
            shutil.copyfile(self.template / name, target / name)

    def count(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0

    @property
    def source(self) -> Source:
        return ("stand-in", self)


@dataclass(frozen=True)
class DyingSource:
    """Writes two whole files and half of a third, then the process is killed."""

    template: Path

    def __call__(self, target: Path) -> None:
        names = list(MNIST_MD5)
        for name in names[:2]:
            shutil.copyfile(self.template / name, target / name)
        data = (self.template / names[2]).read_bytes()
        (target / names[2]).write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)


class _SetOnWaiting(logging.Handler):
    def __init__(self, waiting: Event) -> None:
        super().__init__()
        self.waiting = waiting

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("waiting for another process"):
            self.waiting.set()


def ensure_and_report(
    data_dir: Path,
    sources: list[Source],
    expected: dict[str, str],
    results: "Queue[tuple[str, str]]",
    waiting: Event | None = None,
) -> None:
    """Calls ensure_mnist and puts ("ready", folder) or ("refused", reason) on `results`;
    sets `waiting` if it had to wait for the lock."""
    if waiting is not None:
        logger = logging.getLogger("worker.mnist_files")
        logger.setLevel(logging.INFO)
        logger.addHandler(_SetOnWaiting(waiting))
    try:
        folder = ensure_mnist(data_dir, sources, expected, lock_timeout=DEADLINE)
    except DataPreparationError as error:
        results.put(("refused", str(error)))
    else:
        results.put(("ready", str(folder)))


def hold_the_lock(data_dir: Path, held: Event) -> None:
    """Takes the preparation lock and keeps it until the process is killed."""
    with preparation_lock(data_dir, timeout=DEADLINE):
        held.set()
        # Nothing sets this event: the wait ends when the test kills the process, or at the
        # deadline if the test itself died first.
        threading.Event().wait(DEADLINE)
