"""CPU seconds and resident memory of processes, read from Linux's /proc: what a benchmark's
neighbours (an API, a broker's poller, a heartbeat) cost while it was timed, and what a
training process holds."""

import os
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields follow its last ")".
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User and system time of `pid` itself (0 once it has gone)."""
    fields = _stat(pid)
    # Fields 14 and 15 of stat (utime, stime), counted from the state, field 3.
    return (int(fields[11]) + int(fields[12])) / TICKS if fields else 0.0


def tree(pid: int) -> list[int]:
    """`pid` and its living descendants."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


Snapshot = dict[int, float]


def snapshot(pids: list[int]) -> Snapshot:
    """The CPU seconds of each of `pids` so far."""
    return {pid: cpu_seconds(pid) for pid in pids}


def used_since(before: Snapshot) -> Snapshot:
    """The CPU seconds each process of `before` used since."""
    return {pid: cpu_seconds(pid) - seconds for pid, seconds in before.items()}


def resident_mib(pid: int) -> float:
    """The resident memory of `pid` (VmRSS), in MiB; 0 once it has gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
