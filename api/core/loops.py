"""A singleton loop of the API: a daemon thread that makes a pass every `interval` seconds
while this process holds the loop's lease in the database (api.core.leases), so that with
several API processes exactly one runs it. The dispatch sweep and the study scheduler are
such loops."""

import logging
import threading
from abc import ABC, abstractmethod
from typing import Any

from sqlalchemy import Engine

from api.core.leases import LoopLease

log = logging.getLogger(__name__)


class LeasedLoop(ABC):
    """Calls `run_once` every `interval` seconds on a daemon thread until stopped; `wake()`
    asks for a pass now. `run_once` takes or renews the lease itself (`self.lease.hold`)
    and does nothing while another process holds it. A failed pass is logged and the loop
    carries on at the next tick."""

    def __init__(self, name: str, engine: Engine, interval: float, run_at_start: bool) -> None:
        self.name, self.engine, self.interval = name, engine, interval
        # The first pass at once, or only after a first interval.
        self.run_at_start = run_at_start
        self.lease = LoopLease(name, interval, self)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @abstractmethod
    def run_once(self) -> Any:
        """One pass, if this process holds the lease."""

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Ends the loop after its current pass, then gives the lease up."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.lease.seconds + 10)
        self.lease.release(self.engine)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _pause(self) -> None:
        self._wake.wait(self.interval)
        self._wake.clear()

    def _run(self) -> None:
        if not self.run_at_start:
            self._pause()
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next tick
                log.exception("%s: pass failed", self.name)
            self._pause()
