"""Preparing MNIST on a fresh host: real processes racing for one data dir, killed holders
of the lock, and a job's first use. Every source here copies stand-in files; none downloads."""

import json
import multiprocessing
import queue
from collections.abc import Iterator
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from shared.settings import Settings
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.mnist_processes import (
    DEADLINE,
    CountingSource,
    DyingSource,
    ensure_and_report,
    hold_the_lock,
)
from tests.unit.worker.scripted_api import JOB_ID, InternalApi, claim_of, serve
from worker import mnist_files, tasks
from worker.mnist_files import (
    LOCK_NAME,
    MARKER_NAME,
    MNIST_MD5,
    STAGING_PREFIX,
    TEST_LABELS,
    DataPreparationError,
    ensure_mnist,
    is_checked,
    md5_of,
    mismatched_files,
    raw_dir,
)


@pytest.fixture
def template(tmp_path: Path) -> Path:
    """The stand-in files every source here copies."""
    return write_synthetic_mnist(tmp_path / "template", train=256, test=64)


@pytest.fixture
def expected(template: Path) -> dict[str, str]:
    return {name: md5_of(template / name) for name in MNIST_MD5}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


class Children:
    """Processes started with 'spawn', as a fresh worker would be; any still running when
    the test ends are killed."""

    def __init__(self) -> None:
        self.context: SpawnContext = multiprocessing.get_context("spawn")
        self.processes: list[SpawnProcess] = []
        self.results: Queue[tuple[str, str]] = self.context.Queue()

    def start(self, target: Any, *args: Any) -> SpawnProcess:
        process = self.context.Process(target=target, args=args, daemon=True)
        process.start()
        self.processes.append(process)
        return process

    def result(self) -> tuple[str, str]:
        try:
            return self.results.get(timeout=DEADLINE)
        except queue.Empty:
            pytest.fail(f"no child reported within {DEADLINE}s")

    def joined(self, process: SpawnProcess) -> int | None:
        process.join(DEADLINE)
        assert not process.is_alive(), f"child {process.pid} still running after {DEADLINE}s"
        return process.exitcode

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(DEADLINE)
        self.results.close()
        self.results.join_thread()


@pytest.fixture
def children() -> Iterator[Children]:
    spawned = Children()
    try:
        yield spawned
    finally:
        spawned.stop()


def counting(template: Path, tmp_path: Path, **events: Any) -> CountingSource:
    return CountingSource(template, tmp_path / "calls", **events)


class TestTwoProcessesOnOneHost:
    def test_racing_on_an_empty_data_dir_they_prepare_it_once(
        self, children: Children, template, expected, data_dir, tmp_path
    ):
        started, release, waiting = (children.context.Event() for _ in range(3))
        source = counting(template, tmp_path, started=started, release=release)
        for _ in range(2):
            children.start(
                ensure_and_report, data_dir, [source.source], expected, children.results, waiting
            )
        # One process is preparing, held there until the other is seen waiting on the lock.
        assert started.wait(DEADLINE), "neither process started preparing"
        assert waiting.wait(DEADLINE), "the second process never waited on the lock"
        assert source.count() == 1
        release.set()
        results = [children.result(), children.result()]
        assert results == [("ready", str(raw_dir(data_dir)))] * 2
        assert [children.joined(process) for process in children.processes] == [0, 0]
        assert source.count() == 1
        assert mismatched_files(raw_dir(data_dir), expected) == []
        assert is_checked(raw_dir(data_dir), expected)

    def test_a_later_process_finds_the_files_ready_and_neither_fetches_nor_waits(
        self, children: Children, template, expected, data_dir, tmp_path
    ):
        source = counting(template, tmp_path)
        ensure_mnist(data_dir, [source.source], expected)
        waiting = children.context.Event()
        later = children.start(
            ensure_and_report, data_dir, [source.source], expected, children.results, waiting
        )
        assert children.result() == ("ready", str(raw_dir(data_dir)))
        assert children.joined(later) == 0
        assert source.count() == 1
        assert not waiting.is_set()


class TestAKilledProcess:
    def test_a_lock_held_by_a_live_process_times_out_with_a_clear_error(
        self, children: Children, template, expected, data_dir, tmp_path
    ):
        held = children.context.Event()
        children.start(hold_the_lock, data_dir, held)
        assert held.wait(DEADLINE)
        source = counting(template, tmp_path)
        with pytest.raises(DataPreparationError) as refused:
            ensure_mnist(data_dir, [source.source], expected, lock_timeout=0.2)
        assert str(refused.value) == (
            "gave up after 0.2s waiting for another process to finish preparing MNIST in "
            f"{data_dir} (it holds the lock {data_dir / LOCK_NAME})"
        )
        assert source.count() == 0

    def test_a_lock_held_by_a_killed_process_does_not_block(
        self, children: Children, template, expected, data_dir, tmp_path
    ):
        held = children.context.Event()
        holder = children.start(hold_the_lock, data_dir, held)
        assert held.wait(DEADLINE)
        holder.kill()
        assert children.joined(holder) == -9
        # The lock file is still there; the kernel dropped the lock with its holder.
        assert (data_dir / LOCK_NAME).exists()
        source = counting(template, tmp_path)
        assert ensure_mnist(data_dir, [source.source], expected, lock_timeout=5) == raw_dir(
            data_dir
        )
        assert source.count() == 1

    def test_one_killed_while_preparing_leaves_no_file_that_looks_complete(
        self, children: Children, template, expected, data_dir, tmp_path
    ):
        dying = children.start(
            ensure_and_report,
            data_dir,
            [("dying", DyingSource(template))],
            expected,
            children.results,
        )
        assert children.joined(dying) == -9
        folder = raw_dir(data_dir)
        assert [path.name for path in folder.iterdir()] == []
        assert [path.name for path in data_dir.glob(f"{STAGING_PREFIX}*")] != []
        source = counting(template, tmp_path)
        assert ensure_mnist(data_dir, [source.source], expected) == folder
        assert source.count() == 1
        assert mismatched_files(folder, expected) == []
        assert list(data_dir.glob(f"{STAGING_PREFIX}*")) == []


@pytest.mark.usefixtures("one_torch_thread")
class TestAJobOnAFreshHost:
    """run_attempt with the real mnist_on_device: the first job prepares the data."""

    @pytest.fixture
    def settings(self, data_dir: Path, tmp_path: Path) -> Settings:
        return Settings(
            api_url="http://api",
            worker_token="worker-token",
            data_dir=data_dir,
            artifact_dir=tmp_path / "artifacts",
            worker_dir=tmp_path / "worker",
            heartbeat_seconds=60,
        )

    @pytest.fixture
    def source(
        self, template: Path, expected: dict[str, str], tmp_path: Path, monkeypatch
    ) -> CountingSource:
        # The stand-ins are what this host's MNIST is checked against, and its only source.
        for name, checksum in expected.items():
            monkeypatch.setitem(mnist_files.MNIST_MD5, name, checksum)
        source = counting(template, tmp_path)
        monkeypatch.setattr(mnist_files, "SOURCES", [source.source])
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        return source

    def finished(self, monkeypatch, settings: Settings) -> dict[str, Any]:
        finishes: list[dict[str, Any]] = []

        class Api(InternalApi):
            def __call__(self, request: httpx.Request) -> httpx.Response:
                if request.url.path.endswith("/finish"):
                    finishes.append(json.loads(request.content))
                return super().__call__(request)

        serve(monkeypatch, Api(claim_of(epochs=1)))
        tasks.run_attempt(JOB_ID, settings)
        [finish] = finishes
        return finish

    def test_the_first_job_prepares_mnist_and_trains_on_it(
        self, monkeypatch, settings, source, data_dir
    ):
        assert self.finished(monkeypatch, settings)["status"] == "succeeded"
        assert source.count() == 1
        assert (raw_dir(data_dir) / MARKER_NAME).is_file()

    def test_a_file_failing_its_md5_fails_the_job_and_says_why(
        self, monkeypatch, settings, source, data_dir
    ):
        folder = ensure_mnist(data_dir)
        with (folder / TEST_LABELS).open("ab") as labels:
            labels.write(b"\x00")
        monkeypatch.setattr(mnist_files, "SOURCES", [("offline", failing_fetch)])
        finish = self.finished(monkeypatch, settings)
        assert finish["status"] == "failed"
        assert finish["error"] == {
            "type": "DataPreparationError",
            "message": f"could not prepare MNIST (removed, not matching their MD5: {TEST_LABELS}):"
            " offline: no network in tests",
        }
        assert not (folder / TEST_LABELS).exists()


def failing_fetch(target: Path) -> None:
    raise ConnectionError("no network in tests")
