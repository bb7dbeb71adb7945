from collections.abc import Iterator

import pytest

from tests.unit import torch_threads


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One PyTorch thread for the test (see tests/unit/torch_threads.py)."""
    with torch_threads.one_torch_thread():
        yield
