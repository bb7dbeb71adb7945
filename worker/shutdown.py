"""SIGTERM in a training process: finish the epoch if it fits in the grace period, else stop
at the next batch; either way the job is handed back to resume from its last checkpoint.

Celery's warm shutdown waits for running tasks to end, which for a training job could be
hours, so the worker's main process passes SIGTERM on to its pool processes, where this
handler turns it into a deadline the training loop reads between batches. Celery also
sends SIGTERM to a pool process whose task it cancels after losing the broker.

The handler is installed for the length of a job only: the pool installs its own, which
exits the process, after our process initialiser runs, and an idle pool process should
still exit on SIGTERM.
"""

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

_grace_seconds = 30.0
_deadline: float | None = None


def handback_deadline() -> float | None:
    """The time.monotonic() by which the running job should be handed back, or None."""
    return _deadline


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    global _deadline
    if _deadline is None:
        _deadline = time.monotonic() + _grace_seconds
    # Only async-signal-safe work here: os.write, not logging, which takes locks.
    os.write(2, f"training process {os.getpid()}: SIGTERM, handing the job back\n".encode())


@contextmanager
def handing_back_on_sigterm(grace_seconds: float) -> Iterator[None]:
    """While a job runs in this process, SIGTERM means "hand the job back", not "die now"."""
    global _grace_seconds, _deadline
    _grace_seconds, _deadline = grace_seconds, None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _deadline = None


def forward_sigterm(pids: list[int]) -> None:
    """For the worker's main process: tell each pool process to hand its job back."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            # Ended between Celery listing it and now: it has no job left to hand back.
            log.info("training process %d is already gone", pid)
            continue
        log.info("asked training process %d to hand its job back", pid)
