"""Who reads the CPU's flags: every open() of /proc/cpuinfo while a test runs."""

import builtins
from typing import Any

import pytest


def cpuinfo_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that grows by one at each open() of /proc/cpuinfo from now on."""
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == "/proc/cpuinfo":
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened
