"""What Linux's /proc says of a running process: its children and its environment."""

from pathlib import Path

PROC = Path("/proc")


def children_of(pid: int) -> list[int]:
    """The pids of the live processes whose parent is `pid`."""
    found = []
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended while we looked
        # The command name, in parentheses, may hold spaces: the fields follow its last ")".
        state, parent = text.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def command_line(pid: int) -> list[str]:
    return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def environment_of(pid: int) -> dict[str, str]:
    """The environment `pid` was started with."""
    raw = (PROC / str(pid) / "environ").read_bytes().decode(errors="replace")
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)
