"""The training hardware: the device, the precision and whether the training step may be
captured in CUDA graphs, decided once when a job starts.

Reading /proc/cpuinfo or asking CUDA is cheap once and wasteful per batch, so a job picks
its `Hardware` when it starts and passes it to the trainer, the evaluation and the LR
range test, which all train and evaluate under the same autocast.
"""

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

# CPU flags of native bf16 arithmetic; without them bf16 is emulated and slower than fp32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def mixed_precision(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """bf16 autocast where the hardware does bf16 natively: CUDA, or CPUs with AVX-512 BF16
    or AMX; plain fp32 elsewhere."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(
        NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags)
    )


def cuda_graphs_supported(device: torch.device) -> bool:
    """Whether this PyTorch can capture and replay CUDA graphs on `device`."""
    return (
        device.type == "cuda" and hasattr(torch.cuda, "CUDAGraph") and hasattr(torch.cuda, "graph")
    )


@dataclass(frozen=True)
class Hardware:
    """Where a job trains, whether in bf16 autocast or plain fp32, and whether its training
    step may be captured in CUDA graphs (worker.training.graphs decides if it is)."""

    device: torch.device
    bf16: bool
    graphs: bool = False

    def autocast(self, cache: bool = True) -> AbstractContextManager[Any]:
        """The context every forward pass of the job runs in. A pass captured in a CUDA graph
        runs without autocast's cache of cast weights, which would outlive the capture."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache)
        return nullcontext()

    def __str__(self) -> str:
        graphs = ", CUDA graphs" if self.graphs else ""
        return f"{self.device} ({'bf16 autocast' if self.bf16 else 'fp32'}{graphs})"


def detect_hardware(cuda_graphs: bool = True) -> Hardware:
    """This machine's training device and precision; call once per job, not per batch.
    `cuda_graphs` false keeps every training step eager (TUNELAB_CUDA_GRAPHS)."""
    device = pick_device()
    graphs = cuda_graphs and cuda_graphs_supported(device)
    return Hardware(device, mixed_precision(device), graphs)
