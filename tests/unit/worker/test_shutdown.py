import logging
import os
import signal
import subprocess
import sys
import time

from worker import shutdown


def test_sigterm_during_a_job_sets_a_handback_deadline_instead_of_exiting():
    before = signal.getsignal(signal.SIGTERM)
    with shutdown.handing_back_on_sigterm(grace_seconds=20):
        assert shutdown.handback_deadline() is None
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = shutdown.handback_deadline()
        assert deadline is not None
        assert 15 < deadline - time.monotonic() <= 20
        # A second SIGTERM does not move the deadline.
        os.kill(os.getpid(), signal.SIGTERM)
        assert shutdown.handback_deadline() == deadline
    # Between jobs the process's own handler is back, and no deadline is left over.
    assert signal.getsignal(signal.SIGTERM) is before
    assert shutdown.handback_deadline() is None


def test_forwarding_signals_live_processes_and_skips_gone_ones(caplog):
    gone = 2**22 + 12345  # above Linux's largest pid_max: never a process
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with caplog.at_level(logging.INFO, logger="worker.shutdown"):
            shutdown.forward_sigterm([gone, live.pid])
        assert live.wait(timeout=10) == -signal.SIGTERM
    finally:
        live.kill()
        live.wait()
    assert [record.getMessage() for record in caplog.records] == [
        f"training process {gone} is already gone",
        f"asked training process {live.pid} to hand its job back",
    ]
