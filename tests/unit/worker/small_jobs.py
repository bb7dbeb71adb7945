"""Small training jobs that run in a moment on the CPU, in plain fp32."""

from typing import Any

import torch

from shared.spec import JobSpec
from worker.training.device import Hardware

CPU = torch.device("cpu")
# Plain fp32 whatever the CPU: the tests give the same numbers on every machine.
CPU_FP32 = Hardware(CPU, bf16=False)
TRAIN_SUBSET = 384


def conv(out_channels: int, **fields: Any) -> dict[str, Any]:
    return {"type": "conv", "out_channels": out_channels, **fields}


def small_layers() -> list[dict[str, Any]]:
    return [
        conv(8, kernel_size=5, stride=2, batch_norm=True),
        {"type": "maxpool", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 10},
    ]


def small_job(**fields: Any) -> JobSpec:
    """Two quick epochs of a small model on a subset of the synthetic digits."""
    body: dict[str, Any] = {
        "model": {"layers": small_layers()},
        "data": {"train_subset": TRAIN_SUBSET},
        "optimizer": {"name": "adam", "lr": 0.01},
        "schedule": {"name": "constant"},
        "batch_size": 64,
        "epochs": 2,
    }
    return JobSpec.model_validate({**body, **fields})
