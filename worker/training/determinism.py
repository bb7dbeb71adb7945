"""Deterministic algorithms for a job that asks for them (`deterministic` in its spec).

PyTorch's switch is the process's, not the job's: it is turned on while such a job trains
and put back as it was afterwards, so that the next job the process takes trains at full
speed unless it asks too.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# cuBLAS picks its reduction order by workspace; with one of these configurations PyTorch
# allows it under deterministic algorithms. The variable must be in the environment before
# the process first uses cuBLAS, since PyTorch sizes its workspaces then and keeps them:
# worker.runtime sets it when a worker process starts, before CUDA is touched.
CUBLAS_WORKSPACE_CONFIG = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_CUBLAS_WORKSPACES = frozenset({":4096:8", ":16:8"})
DEFAULT_CUBLAS_WORKSPACE = ":4096:8"


class DeterminismUnavailable(RuntimeError):
    """The process cannot train deterministically on this device as it was started."""


@contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """Within, PyTorch uses deterministic algorithms only (an operation that has none raises)
    and cuDNN picks its convolution algorithms without benchmarking, if `enabled`; otherwise
    nothing changes."""
    if not enabled:
        yield
        return
    workspace = os.environ.get(CUBLAS_WORKSPACE_CONFIG)
    if device.type == "cuda" and workspace not in DETERMINISTIC_CUBLAS_WORKSPACES:
        raise DeterminismUnavailable(
            f"deterministic training on CUDA needs {CUBLAS_WORKSPACE_CONFIG}="
            f"{DEFAULT_CUBLAS_WORKSPACE} in the worker's environment from its start "
            f"(it has {workspace!r}); `tunelab worker` sets it unless told otherwise"
        )
    cudnn = torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
    )
    torch.use_deterministic_algorithms(True)
    # Benchmarking could pick another (deterministic) algorithm on another run.
    cudnn.benchmark = False
    cudnn.deterministic = True
    try:
        yield
    finally:
        enabled_before, warn_only, cudnn.benchmark, cudnn.deterministic = before
        torch.use_deterministic_algorithms(enabled_before, warn_only=warn_only)
