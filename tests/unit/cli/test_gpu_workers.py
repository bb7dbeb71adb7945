"""`tunelab worker --gpus`: which devices, and the supervisor run on real processes, with a
stand-in for `tunelab worker` that records what it sees."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli.operator.gpu_workers import NoDevices, parse_gpus, visible_devices
from testbed.stack import REPO_ROOT, wait_until

# Stands in for `tunelab worker`: records its pid and the environment that concerns it, then
# waits for SIGTERM, as a worker does, unless it is the device told to fail.
STAND_IN = """
import json, os, signal, sys, time
from pathlib import Path

device = os.environ["CUDA_VISIBLE_DEVICES"]
folder = Path(sys.argv[1])
seen = {"pid": os.getpid(), "name": os.environ["TUNELAB_WORKER_NAME"]}
(folder / f"{device}.json").write_text(json.dumps(seen))
if device == os.environ.get("FAIL_DEVICE"):
    sys.exit(3)

def stop(signum, frame):
    (folder / f"{device}.stopped").write_text("")
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


def seen_by(folder: Path, device: str) -> dict[str, object]:
    path = folder / f"{device}.json"
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

    def start(devices: list[str], **env: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(script), str(tmp_path)]
        code = (
            "import sys\nfrom cli.operator.gpu_workers import run\n"
            f"sys.exit(run({devices!r}, 'node-7', command={command!r}))"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, **env}
        )
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
        for device in ("0", "1"):
            wait_until(lambda d=device: seen_by(tmp_path, d), 20, f"the worker of GPU {device}")
        assert seen_by(tmp_path, "0")["name"] == "node-7-gpu0"
        assert seen_by(tmp_path, "1")["name"] == "node-7-gpu1"
        supervisor.send_signal(signal.SIGTERM)  # to the supervisor alone, as `docker stop` does
        assert supervisor.wait(timeout=20) == 0
        for device in ("0", "1"):
            assert (tmp_path / f"{device}.stopped").exists()
            assert not alive(int(str(seen_by(tmp_path, device)["pid"])))

    def test_a_worker_that_exits_stops_the_others_and_the_supervisor(self, supervise, tmp_path):
        supervisor = supervise(["0", "1"], FAIL_DEVICE="1")
        assert supervisor.wait(timeout=20) == 3
        assert (tmp_path / "0.stopped").exists()
