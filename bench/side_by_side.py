"""Several training processes on one device, as `tunelab worker --gpus all --per-gpu N` runs
them: each trains the bench's trial job, and says how fast and how much memory it held.

`python -m bench.side_by_side --processes 4` starts four children of its own (each
`python -m bench.side_by_side --child`), all at once, and prints each one's seconds per epoch
beside one process's alone, run first in the same way.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.epoch_parts import run_trial, trial_spec
from worker.training.data import load_mnist
from worker.training.device import Hardware, cuda_graphs_supported, mixed_precision

CHILD_MARK = "side-by-side:"


def device_memory_mib() -> dict[str, float]:
    """What the device's memory holds, where it can be read: PyTorch's peak in this process,
    and what nvidia-smi counts for this process (its CUDA context included)."""
    if not torch.cuda.is_available():
        return {}
    mib = 1024 * 1024
    memory = {
        "peak_allocated": torch.cuda.max_memory_allocated() / mib,
        "peak_reserved": torch.cuda.max_memory_reserved() / mib,
    }
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        answer = subprocess.run(
            [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for line in answer.splitlines():
            pid, _, used = line.partition(",")
            if pid.strip() == str(os.getpid()):
                memory["process_total"] = float(used)
    return memory


def child(data_dir: Path, device_name: str, epochs: int, threads: int) -> None:
    """One process of the bench: the trial, then one JSON line the parent reads."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    hardware = Hardware(device, mixed_precision(device), cuda_graphs_supported(device))
    data = load_mnist(data_dir, device)
    run = run_trial(trial_spec(epochs), data, hardware)
    seconds = [row["epoch_seconds"] for row in run.rows[1:]] or [run.rows[0]["epoch_seconds"]]
    figures = {
        "pid": os.getpid(),
        "epoch_seconds": statistics.median(seconds),
        "wall": run.wall,
        "memory_mib": device_memory_mib(),
    }
    print(CHILD_MARK + json.dumps(figures), flush=True)


def start_children(
    count: int, data_dir: Path, device: str, epochs: int, threads: int
) -> list[dict[str, object]]:
    command = [
        sys.executable,
        "-m",
        "bench.side_by_side",
        "--child",
        f"--data-dir={data_dir}",
        f"--device={device}",
        f"--epochs={epochs}",
        f"--threads={threads}",
    ]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    results = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"a side-by-side process exited with {process.returncode}")
        line = next(line for line in output.splitlines() if line.startswith(CHILD_MARK))
        results.append(json.loads(line[len(CHILD_MARK) :]))
    return results


def describe_memory(memory: object) -> str:
    if not isinstance(memory, dict) or not memory:
        return "device memory: none (CPU)"
    said = (
        f"PyTorch peak {memory['peak_allocated']:.0f} MiB allocated, "
        f"{memory['peak_reserved']:.0f} MiB reserved"
    )
    if "process_total" in memory:
        said += f"; nvidia-smi: {memory['process_total']:.0f} MiB for the process"
    return said


def side_by_side(processes: int, data_dir: Path, device: str, epochs: int) -> None:
    cores = len(os.sched_getaffinity(0))
    print(
        f"side by side: the trial ({epochs} epochs) in 1 process, then in {processes} at once "
        f"on {device}, {max(1, cores // processes)} CPU threads each",
        flush=True,
    )
    alone = start_children(1, data_dir, device, epochs, max(1, cores // processes))[0]
    print(
        f"  alone: {alone['epoch_seconds']:.2f} s per epoch; {describe_memory(alone['memory_mib'])}"
    )
    began = time.perf_counter()
    together = start_children(processes, data_dir, device, epochs, max(1, cores // processes))
    wall = time.perf_counter() - began
    for number, figures in enumerate(together):
        print(
            f"  process {number}: {figures['epoch_seconds']:.2f} s per epoch; "
            f"{describe_memory(figures['memory_mib'])}"
        )
    slowest = max(float(str(figures["epoch_seconds"])) for figures in together)
    throughput = processes * float(str(alone["epoch_seconds"])) / slowest
    print(
        f"  {processes} together: {throughput:.2f}x the epochs per second of one alone "
        f"(each at most {slowest:.2f} s per epoch); {wall:.1f} s for all",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=Path("var/data"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        child(args.data_dir, args.device, args.epochs, args.threads)
    else:
        side_by_side(args.processes, args.data_dir, args.device, args.epochs)


if __name__ == "__main__":
    main()
