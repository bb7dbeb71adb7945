"""Per-process training state: torch threads and the MNIST tensors, set up once per process."""

import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

from shared.settings import Settings
from worker.mnist_files import ensure_mnist
from worker.training.data import MnistTensors, load_mnist
from worker.training.determinism import CUBLAS_WORKSPACE_CONFIG, DEFAULT_CUBLAS_WORKSPACE
from worker.training.device import detect_hardware

log = logging.getLogger(__name__)


def configure_torch(settings: Settings) -> None:
    # Before CUDA is first touched (below): any job this process takes may ask to train
    # deterministically, and cuBLAS needs this from its first use for that (eight 4 MiB
    # workspaces, 32 MiB of GPU memory in all). An operator's own setting stands.
    os.environ.setdefault(CUBLAS_WORKSPACE_CONFIG, DEFAULT_CUBLAS_WORKSPACE)
    threads = settings.torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    # Only said here; each job detects its own hardware when it starts.
    log.info("training on %s with %d threads", detect_hardware(), threads)


@lru_cache(maxsize=1)
def mnist_on_device(data_dir: str, device: torch.device) -> MnistTensors:
    """MNIST loaded once per worker process, onto the job's training device."""
    ensure_mnist(Path(data_dir))
    return load_mnist(Path(data_dir), device)
