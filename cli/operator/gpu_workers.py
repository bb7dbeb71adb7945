"""`tunelab worker --gpus`: one training worker per GPU, each seeing only its own device.

A supervisor starts one `tunelab worker` per device, with CUDA_VISIBLE_DEVICES set to that
device alone, one training process, and a name of its own (`NAME-gpuN`, NAME being
TUNELAB_WORKER_NAME or the host name): its Celery node name, and the `worker` a job names.
So a node with 8 GPUs trains 8 jobs at once, one per device.

SIGTERM or SIGINT to the supervisor is passed on to every worker as SIGTERM
(cli.operator.child_processes), which hands its job back as a lone worker does; the supervisor
exits once they all have, so give it the same stop grace period. A worker that exits on its
own is a broken node: the supervisor stops the others and exits with that worker's status, for
whatever runs the node (Compose, systemd) to start it again whole.
"""

import logging
import os
import sys
from collections.abc import Sequence

from cli.operator.child_processes import ChildProcesses, shell_status

log = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
WORKER_NAME = "TUNELAB_WORKER_NAME"


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
    argv = list(command or worker_command())
    # No grace of our own: a worker handing its job back takes the time it needs, and
    # whatever runs the node kills the lot after its stop grace period.
    with ChildProcesses(stop_grace=None) as workers:
        for device in devices:
            process = workers.start(device, argv, env=worker_env(device, name))
            log.info("worker %s-gpu%s started (pid %d)", name, device, process.pid)
        broken = workers.wait_for_signal_or_exit()
        if broken is not None:
            log.error(
                "worker %s-gpu%s exited with status %s; stopping the others",
                name,
                broken,
                workers.processes[broken].returncode,
            )
        workers.stop()
    if broken is not None:
        return shell_status(workers.processes[broken].returncode) or 1
    return max((shell_status(p.returncode) for p in workers.processes.values()), default=0)
