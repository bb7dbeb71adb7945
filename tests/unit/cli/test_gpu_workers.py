"""`tunelab worker --gpus`: which devices, how many workers on each, and the supervisor run on
real processes, with a stand-in for `tunelab worker` that records what it sees."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app, parse_args
from cli.operator.gpu_workers import (
    NoDevices,
    Slot,
    parse_gpus,
    slots,
    threads_per_worker,
    visible_devices,
    worker_env,
)
from testbed.stack import REPO_ROOT, wait_until
from tests.integration.proc import children_of, environment_of

# Stands in for `tunelab worker`: records its pid and the environment that concerns it, under
# its worker name, then waits for SIGTERM, as a worker does, unless it is the device told to
# fail.
STAND_IN = """
import json, os, signal, sys, time
from pathlib import Path

device = os.environ["CUDA_VISIBLE_DEVICES"]
name = os.environ["TUNELAB_WORKER_NAME"]
folder = Path(sys.argv[1])
seen = {"pid": os.getpid(), "device": device, "threads": os.environ["TUNELAB_TORCH_THREADS"]}
(folder / f"{name}.json").write_text(json.dumps(seen))
if device == os.environ.get("FAIL_DEVICE"):
    sys.exit(3)

def stop(signum, frame):
    (folder / f"{name}.stopped").write_text("")
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.1)
"""


class TestParseGpus:
    @pytest.mark.parametrize(
        ("text", "devices"),
        [("all", None), ("ALL", None), ("0", ["0"]), ("0,1", ["0", "1"]), (" 3 , 01", ["3", "1"])],
    )
    def test_all_or_device_indices(self, text, devices):
        assert parse_gpus(text) == devices

    @pytest.mark.parametrize("text", ["", "gpu0", "0,,1", "-1", "0,x"])
    def test_anything_else_is_refused(self, text):
        with pytest.raises(ValueError, match="neither"):
            parse_gpus(text)

    def test_a_device_named_twice_is_refused(self):
        with pytest.raises(ValueError, match="twice"):
            parse_gpus("1,1")


class TestVisibleDevices:
    def test_the_operators_choice_is_kept(self, monkeypatch):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
        assert visible_devices() == ["2", "3"]

    def test_no_device_is_a_clear_error(self, monkeypatch):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        with pytest.raises(NoDevices, match="without --gpus"):
            visible_devices()


class TestSlots:
    def test_one_worker_per_device_keeps_the_devices_name(self):
        assert slots(["0", "3"], "node-7") == [Slot("0", "node-7-gpu0"), Slot("3", "node-7-gpu3")]

    def test_several_per_device_are_numbered_on_it(self):
        assert slots(["0", "1"], "n", per_gpu=3) == [
            Slot("0", "n-gpu0-0"),
            Slot("0", "n-gpu0-1"),
            Slot("0", "n-gpu0-2"),
            Slot("1", "n-gpu1-0"),
            Slot("1", "n-gpu1-1"),
            Slot("1", "n-gpu1-2"),
        ]

    def test_none_per_device_is_refused(self):
        with pytest.raises(ValueError, match="at least one"):
            slots(["0"], "n", per_gpu=0)

    @pytest.mark.parametrize(
        ("workers", "cores", "threads"), [(1, 16, 16), (4, 16, 4), (3, 16, 5), (32, 16, 1)]
    )
    def test_the_cores_are_shared_out(self, workers, cores, threads):
        assert threads_per_worker(workers, cores) == threads

    def test_an_operators_thread_count_stands(self, monkeypatch):
        monkeypatch.setenv("TUNELAB_TORCH_THREADS", "7")
        assert worker_env(Slot("0", "n-gpu0"), threads=2)["TUNELAB_TORCH_THREADS"] == "7"
        monkeypatch.delenv("TUNELAB_TORCH_THREADS")
        env = worker_env(Slot("1", "n-gpu1-0"), threads=2)
        assert (env["TUNELAB_TORCH_THREADS"], env["CUDA_VISIBLE_DEVICES"]) == ("2", "1")
        assert env["TUNELAB_WORKER_NAME"] == "n-gpu1-0"


def seen_by(folder: Path, name: str) -> dict[str, object]:
    path = folder / f"{name}.json"
    result: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts `cli.operator.gpu_workers.run` in a process of its own, the stand-in as each worker;
    whatever is still running at the end is killed."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    started: list[subprocess.Popen[bytes]] = []

    def start(devices: list[str], per_gpu: int = 1, **env: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(script), str(tmp_path)]
        code = (
            "import sys\nfrom cli.operator.gpu_workers import run\n"
            f"sys.exit(run({devices!r}, 'node-7', command={command!r}, per_gpu={per_gpu}))"
        )
        environment = {**os.environ, **env}
        environment.pop("TUNELAB_TORCH_THREADS", None)
        process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=environment)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
    for seen in tmp_path.glob("*.json"):
        pid = int(json.loads(seen.read_text())["pid"])
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


class TestSupervisor:
    def test_each_worker_sees_only_its_device_and_sigterm_reaches_them_all(
        self, supervise, tmp_path
    ):
        supervisor = supervise(["0", "1"])
        names = {"node-7-gpu0": "0", "node-7-gpu1": "1"}
        for name in names:
            wait_until(lambda n=name: seen_by(tmp_path, n), 20, f"the worker {name}")
        assert {name: seen_by(tmp_path, name)["device"] for name in names} == names
        supervisor.send_signal(signal.SIGTERM)  # to the supervisor alone, as `docker stop` does
        assert supervisor.wait(timeout=20) == 0
        for name in names:
            assert (tmp_path / f"{name}.stopped").exists()
            assert not alive(int(str(seen_by(tmp_path, name)["pid"])))

    def test_per_gpu_starts_that_many_workers_on_each_device(self, supervise, tmp_path):
        supervisor = supervise(["0", "1"], per_gpu=3)
        names = [f"node-7-gpu{device}-{index}" for device in "01" for index in range(3)]
        for name in names:
            wait_until(lambda n=name: seen_by(tmp_path, n), 20, f"the worker {name}")
        # What the kernel says each child was started with, not only what it wrote down.
        children = children_of(supervisor.pid)
        started = {
            environment_of(pid)["TUNELAB_WORKER_NAME"]: environment_of(pid)["CUDA_VISIBLE_DEVICES"]
            for pid in children
        }
        assert started == {name: name[len("node-7-gpu")] for name in names}
        assert sorted(children) == sorted(int(str(seen_by(tmp_path, n)["pid"])) for n in names)
        # Six workers share the cores: none is told to use them all.
        threads = {int(str(seen_by(tmp_path, name)["threads"])) for name in names}
        assert threads == {threads_per_worker(len(names))}
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
        assert all((tmp_path / f"{name}.stopped").exists() for name in names)
        assert not any(alive(pid) for pid in children)

    def test_a_worker_that_exits_stops_the_others_and_the_supervisor(self, supervise, tmp_path):
        supervisor = supervise(["0", "1"], FAIL_DEVICE="1")
        assert supervisor.wait(timeout=20) == 3
        assert (tmp_path / "node-7-gpu0.stopped").exists()


class TestCommandLine:
    def test_per_gpu_parses_with_gpus(self):
        parsed = parse_args(["worker", "--gpus", "all", "--per-gpu", "4"])
        assert (parsed.gpus, parsed.per_gpu) == ("all", 4)

    @pytest.mark.parametrize(
        ("argv", "problem"),
        [
            (["worker", "--per-gpu", "2"], "only with --gpus"),
            (["worker", "--gpus", "0", "--concurrency", "2"], "--per-gpu"),
        ],
    )
    def test_per_gpu_without_gpus_and_concurrency_with_them_are_refused(
        self, argv, problem, monkeypatch
    ):
        monkeypatch.setenv("TUNELAB_WORKER_TOKEN", "token")
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2
        assert problem in " ".join(result.output.split())
