import os
import signal
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


def test_forwarding_skips_processes_that_are_gone():
    shutdown.forward_sigterm([2**22 + 12345])  # no such pid: nothing raised
