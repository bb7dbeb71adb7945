"""One PyTorch thread for tests of tiny models: a second thread only adds synchronisation,
and when other processes share the cores it can make each training run many times slower."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
