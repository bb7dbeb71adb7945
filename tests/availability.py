"""What a test needs from the machine (a service, a browser, root): without it a test skips
locally and fails under CI, where everything it needs must be there."""

import os
from typing import NoReturn

import pytest


def unavailable(message: str, needed_for: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI needs it for {needed_for}")
    pytest.skip(message)
