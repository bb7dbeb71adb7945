"""`tunelab worker --gpus`: one training worker per GPU, each seeing only its own device.

A supervisor starts one `tunelab worker` per device, with CUDA_VISIBLE_DEVICES set to that
device alone, one training process, and a name of its own (`NAME-gpuN`, NAME being
TUNELAB_WORKER_NAME or the host name): its Celery node name, and the `worker` a job names.
So a node with 8 GPUs trains 8 jobs at once, one per device.

SIGTERM or SIGINT to the supervisor is passed on to every worker as SIGTERM, which hands its
job back as a lone worker does; the supervisor exits once they all have, so give it the same
stop grace period. A worker that exits on its own is a broken node: the supervisor stops the
others and exits with that worker's status, for whatever runs the node (Compose, systemd) to
start it again whole.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from types import FrameType

log = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
WORKER_NAME = "TUNELAB_WORKER_NAME"
# How often the supervisor looks at its workers and at the signals it was sent.
POLL_SECONDS = 0.2


class NoDevices(Exception):
    """`--gpus all` on a machine where no CUDA device is visible."""


def parse_gpus(text: str) -> list[str] | None:
    """The device indices of `--gpus 0,1`, or None for `all`; ValueError if neither."""
    if text.strip().lower() == "all":
        return None
    entries = [entry.strip() for entry in text.split(",")]
    if not entries or not all(entry.isdigit() for entry in entries):
        raise ValueError(f"{text!r} is neither `all` nor device indices such as 0,1")
    if len(set(entries)) != len(entries):
        raise ValueError(f"{text!r} names a device twice")
    return [str(int(entry)) for entry in entries]


def visible_devices() -> list[str]:
    """Every device this process may use: the entries of CUDA_VISIBLE_DEVICES when it is set
    (the operator already chose), else one index per device PyTorch counts."""
    chosen = os.environ.get(CUDA_VISIBLE_DEVICES)
    if chosen is not None:
        devices = [entry.strip() for entry in chosen.split(",") if entry.strip()]
    else:
        import torch

        # Counted through NVML where it can be: CUDA itself is left to the workers.
        devices = [str(index) for index in range(torch.cuda.device_count())]
    if not devices:
        raise NoDevices(
            "--gpus all: no CUDA device is visible here; run `tunelab worker` without --gpus "
            "to train on the CPU"
        )
    return devices


def worker_command() -> list[str]:
    """One `tunelab worker` with a single training process: the one device's."""
    return [sys.executable, "-m", "cli.main", "worker", "--concurrency", "1"]


def worker_env(device: str, name: str) -> dict[str, str]:
    return {**os.environ, CUDA_VISIBLE_DEVICES: device, WORKER_NAME: f"{name}-gpu{device}"}


def run(devices: Sequence[str], name: str, command: Sequence[str] | None = None) -> int:
    """Starts `command` (a `tunelab worker`) once per device and supervises them until they
    have all exited; the exit status for the supervisor."""
    asked_to_stop = 0

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal asked_to_stop
        asked_to_stop += 1

    # Set before the workers start, so that no signal finds the default handler meanwhile;
    # set explicitly, since a shell starting us in the background hands us SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    argv = list(command or worker_command())
    workers = {device: subprocess.Popen(argv, env=worker_env(device, name)) for device in devices}
    for device, process in workers.items():
        log.info("worker %s-gpu%s started (pid %d)", name, device, process.pid)
    forwarded, broken = 0, None
    while any(process.poll() is None for process in workers.values()):
        if asked_to_stop > forwarded:
            forwarded = asked_to_stop
            _stop(workers.values())
        elif broken is None and forwarded == 0:
            broken = next((d for d, p in workers.items() if p.poll() is not None), None)
            if broken is not None:
                log.error(
                    "worker %s-gpu%s exited with status %s; stopping the others",
                    name,
                    broken,
                    workers[broken].returncode,
                )
                _stop(workers.values())
        time.sleep(POLL_SECONDS)
    if broken is not None:
        return _status(workers[broken].returncode) or 1
    return max((_status(process.returncode) for process in workers.values()), default=0)


def _stop(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    # The worker's own way of passing SIGTERM on: each worker then hands its job back.
    from worker.shutdown import forward_sigterm

    forward_sigterm([process.pid for process in processes if process.poll() is None])


def _status(returncode: int) -> int:
    """A child's exit status as a shell reports it: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode
