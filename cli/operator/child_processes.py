"""Child processes run as one group, the one way both supervisors (`tunelab dev` and
`tunelab worker --gpus`) start, watch and stop theirs.

Inside the `with` block SIGTERM and SIGINT no longer end this process: they are counted, for
the supervisor to stop its children. The handlers are set before the first child starts, so
no signal finds the default one meanwhile, and set explicitly, since a shell starting us in
the background hands us SIGINT ignored. Stopping sends SIGTERM to each child still running,
again at each further signal, SIGKILL to those left after the grace, and waits for them all;
leaving the block stops whatever still runs and puts the old handlers back.
"""

import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, Self

# How often the children and the signals received are looked at.
POLL_SECONDS = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def shell_status(returncode: int) -> int:
    """A child's exit status as a shell reports it: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class ChildProcesses:
    """Children by name, in the order they started. `stop_grace`: the seconds a child has
    between SIGTERM and SIGKILL; None for no limit, where whatever runs the supervisor gives
    it a stop grace period of its own."""

    def __init__(self, stop_grace: float | None) -> None:
        self.stop_grace = stop_grace
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # SIGTERMs and SIGINTs received: the supervisor acts on each new one.
        self.stop_signals = 0
        self._previous_handlers: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for number in STOP_SIGNALS:
            self._previous_handlers[number] = signal.signal(number, self._on_stop_signal)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            for number, handler in self._previous_handlers.items():
                signal.signal(number, handler)

    def _on_stop_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop_signals += 1

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(argv), env=env)
        self.processes[name] = process
        return process

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [process for process in self.processes.values() if process.poll() is None]

    def first_exited(self) -> str | None:
        """The first child, in start order, that has exited; None while all run."""
        return next((name for name, p in self.processes.items() if p.poll() is not None), None)

    def wait_for_signal_or_exit(self) -> str | None:
        """Blocks until a stop signal arrives (None) or a child exits (its name)."""
        while not self.stop_signals:
            exited = self.first_exited()
            if exited is not None:
                return exited
            time.sleep(POLL_SECONDS)
        return None

    def stop(self) -> None:
        """SIGTERM to every child still running, again at each further stop signal, SIGKILL to
        any left after the grace; returns once all have exited."""
        self._terminate()
        answered = self.stop_signals
        deadline = None if self.stop_grace is None else time.monotonic() + self.stop_grace
        while self.running():
            if deadline is not None and time.monotonic() >= deadline:
                for process in self.running():
                    process.kill()
                    process.wait()
                return
            if self.stop_signals > answered:
                answered = self.stop_signals
                self._terminate()
            time.sleep(POLL_SECONDS)

    def _terminate(self) -> None:
        # Popen.terminate passes over a child already gone.
        for process in self.running():
            process.terminate()
