"""Per-process training state: torch threads and the MNIST tensors, set up once per process."""

import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

from shared.settings import Settings
from worker.mnist_files import ensure_mnist
from worker.training.data import MnistTensors, load_mnist
from worker.training.loop import pick_device

log = logging.getLogger(__name__)


def configure_torch(settings: Settings) -> None:
    threads = settings.torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    log.info("training on %s with %d threads", pick_device(), threads)


@lru_cache(maxsize=1)
def mnist_on_device(data_dir: str) -> MnistTensors:
    """MNIST loaded once per worker process, onto the training device."""
    ensure_mnist(Path(data_dir))
    return load_mnist(Path(data_dir), pick_device())
