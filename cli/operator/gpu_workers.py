"""`tunelab worker --gpus`: training workers per GPU, each seeing only its own device.

A supervisor starts `--per-gpu N` (default 1, or TUNELAB_WORKERS_PER_GPU) `tunelab worker`s
per device, each with CUDA_VISIBLE_DEVICES set to that device alone, one training process,
and a name of its own: `NAME-gpuD` with one worker per device, `NAME-gpuD-K` (K from 0) with
several, NAME being TUNELAB_WORKER_NAME or the host name. That is its Celery node name, and
the `worker` a job names. So a node with 8 GPUs and `--per-gpu 4` trains 32 jobs at once.

Several processes on one GPU pay when each job leaves the device idle between its kernels,
as small networks do: the device interleaves their kernels. Each process holds its own CUDA
context and a copy of MNIST on the device, and the CPU threads are shared out: unless
TUNELAB_TORCH_THREADS is set, each worker gets the node's cores divided by the workers.

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
from dataclasses import dataclass

from cli.operator.child_processes import ChildProcesses, shell_status

log = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
WORKER_NAME = "TUNELAB_WORKER_NAME"
TORCH_THREADS = "TUNELAB_TORCH_THREADS"


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


@dataclass(frozen=True)
class Slot:
    """One worker of the node: the device it sees and the name it goes by."""

    device: str
    name: str


def slots(devices: Sequence[str], name: str, per_gpu: int = 1) -> list[Slot]:
    """The node's workers, device by device: `per_gpu` on each."""
    if per_gpu < 1:
        raise ValueError(f"{per_gpu} workers per GPU: at least one")
    if per_gpu == 1:
        return [Slot(device, f"{name}-gpu{device}") for device in devices]
    return [
        Slot(device, f"{name}-gpu{device}-{index}")
        for device in devices
        for index in range(per_gpu)
    ]


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """The node's cores shared out among its workers, at least one each."""
    available = len(os.sched_getaffinity(0)) if cores is None else cores
    return max(1, available // max(1, workers))


def worker_command() -> list[str]:
    """One `tunelab worker` with a single training process: the one device's."""
    return [sys.executable, "-m", "cli.main", "worker", "--concurrency", "1"]


def worker_env(slot: Slot, threads: int) -> dict[str, str]:
    env = {**os.environ, CUDA_VISIBLE_DEVICES: slot.device, WORKER_NAME: slot.name}
    # An operator's own setting stands.
    env.setdefault(TORCH_THREADS, str(threads))
    return env


def run(
    devices: Sequence[str],
    name: str,
    command: Sequence[str] | None = None,
    per_gpu: int = 1,
) -> int:
    """Starts `command` (a `tunelab worker`) `per_gpu` times per device and supervises them
    until they have all exited; the exit status for the supervisor."""
    argv = list(command or worker_command())
    node = slots(devices, name, per_gpu)
    threads = threads_per_worker(len(node))
    # No grace of our own: a worker handing its job back takes the time it needs, and
    # whatever runs the node kills the lot after its stop grace period.
    with ChildProcesses(stop_grace=None) as workers:
        for slot in node:
            process = workers.start(slot.name, argv, env=worker_env(slot, threads))
            log.info("worker %s started on GPU %s (pid %d)", slot.name, slot.device, process.pid)
        broken = workers.wait_for_signal_or_exit()
        if broken is not None:
            log.error(
                "worker %s exited with status %s; stopping the others",
                broken,
                workers.processes[broken].returncode,
            )
        workers.stop()
    if broken is not None:
        return shell_status(workers.processes[broken].returncode) or 1
    return max((shell_status(p.returncode) for p in workers.processes.values()), default=0)
