"""The one way the supervisors run their children: a stop signal counted, not fatal; SIGTERM,
again at each further signal, then SIGKILL after the grace; the old handlers back after."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

from cli.operator.child_processes import ChildProcesses, shell_status

# A child that needs `TERMS` SIGTERMs to exit; it touches READY once its handler is set.
STUBBORN = """
import signal, sys, time
from pathlib import Path

terms = 0

def on_term(signum, frame):
    global terms
    terms += 1
    if terms >= int(sys.argv[2]):
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
Path(sys.argv[1]).touch()
while True:
    time.sleep(0.05)
"""


def stubborn(children: ChildProcesses, tmp_path: Path, name: str, terms: int) -> None:
    ready = tmp_path / f"{name}.ready"
    children.start(name, [sys.executable, "-c", STUBBORN, str(ready), str(terms)])
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < deadline, f"{name} never got ready"
        time.sleep(0.05)


def test_a_child_that_exits_is_named_and_the_others_are_stopped(tmp_path):
    with ChildProcesses(stop_grace=10) as children:
        stubborn(children, tmp_path, "steady", terms=1)
        children.start("quitter", [sys.executable, "-c", "raise SystemExit(3)"])
        assert children.wait_for_signal_or_exit() == "quitter"
    assert children.processes["quitter"].returncode == 3
    assert children.processes["steady"].returncode == 0


def test_a_stop_signal_is_counted_and_each_further_one_passed_on(tmp_path):
    with ChildProcesses(stop_grace=None) as children:
        stubborn(children, tmp_path, "twice", terms=2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert children.wait_for_signal_or_exit() is None
        # The child outlives the first SIGTERM; the second signal reaches it during the stop.
        second = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        second.start()
        try:
            children.stop()
        finally:
            # Never a SIGINT after the block, where it would interrupt the test run.
            second.cancel()
            second.join()
    assert children.stop_signals == 2
    assert children.processes["twice"].returncode == 0


def test_a_child_left_after_the_grace_is_killed(tmp_path):
    with ChildProcesses(stop_grace=0.5) as children:
        stubborn(children, tmp_path, "deaf", terms=1000)
        started = time.monotonic()
        children.stop()
    assert 0.5 <= time.monotonic() - started < 5
    assert shell_status(children.processes["deaf"].returncode) == 128 + signal.SIGKILL


def test_leaving_the_block_puts_the_handlers_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with ChildProcesses(stop_grace=1):
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
