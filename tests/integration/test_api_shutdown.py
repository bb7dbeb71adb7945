"""A stopped API does not wait on its event streams: an open stream lasts as long as its
job, and a queued job with no worker lasts for ever."""

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from testbed.stack import Stack, wait_until

pytestmark = pytest.mark.integration

GRACE_SECONDS = 2


def test_sigterm_cuts_open_event_streams_after_the_grace_and_gives_up_the_leases(
    tmp_path: Path,
) -> None:
    stack = Stack(
        tmp_path,
        f"sqlite:///{tmp_path}/tunelab.db",
        "filesystem://",
        "training",
        extra_env={"TUNELAB_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS)},
    )
    try:
        stack.tunelab("db", "upgrade")
        api = stack.start_api()
        key = stack.create_key()
        # No worker: the job stays queued, and its stream open.
        with stack.client(key) as client:
            job_id = client.post("/v1/jobs", json={"epochs": 1}).json()["id"]
        streaming = threading.Event()
        ended: list[str] = []

        def watch() -> None:
            with stack.client(key, timeout=60) as watcher:
                try:
                    with watcher.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                        for line in stream.iter_lines():
                            if line == "event: status":
                                streaming.set()
                    ended.append("closed by the server")
                except httpx.HTTPError as error:
                    ended.append(f"cut: {type(error).__name__}")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert streaming.wait(30), "the stream sent no status event"
        # Both loops hold their leases, so a clean exit has something to give up.
        wait_until(lambda: api.log().count("lease taken by") >= 2, 30, "the API's two leases")

        signalled = time.monotonic()
        api.popen.send_signal(signal.SIGTERM)
        api.popen.wait(timeout=GRACE_SECONDS + 20)
        exit_seconds = time.monotonic() - signalled
        watcher.join(timeout=10)

        # uvicorn, done, raises the signal it caught again, so the exit says SIGTERM.
        assert api.popen.returncode in (0, -signal.SIGTERM), api.log()[-3000:]
        assert exit_seconds < GRACE_SECONDS + 3, f"{exit_seconds:.1f} s to exit"
        assert ended, "the stream was still open after the API exited"
        # The lifespan's shutdown ran after the streams were cut: the next API to start
        # takes the leases at once instead of waiting them out.
        assert api.log().count("lease released by") == 2, api.log()[-3000:]
    finally:
        stack.stop()
