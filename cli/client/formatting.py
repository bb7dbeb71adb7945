"""What every client command prints alike: the consoles, times, durations, counts, the colour
of a status, and the head of a job's or a study's `show`."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STATE_STYLES = {
    "queued": "dim",
    "started": "cyan",
    "running": "cyan",
    "succeeded": "green",
    "pruned": "yellow",
    "infeasible": "magenta",
    "failed": "red",
    "cancelled": "dim",
}


def console(stderr: bool = False) -> Console:
    # Markup off: parameter paths (`model.layers[0].out_channels`), names and reasons are data.
    return Console(stderr=stderr, markup=False, highlight=False, emoji=False)


def format_value(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def format_time(text: str | None) -> str:
    if not text:
        return "—"
    return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_seconds(seconds: float) -> str:
    """`1h 02m`, `3m 07s`, `12s`."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, whole = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {whole:02d}s" if minutes else f"{whole}s"


def format_duration(start: str, end: str) -> str:
    elapsed = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return format_seconds(elapsed.total_seconds())


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def styled_state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def state_line(kind: str, resource_id: str, state: str) -> Text:
    """`job 01J… succeeded`, the state in its colour."""
    line = Text(f"{kind} {resource_id} ")
    line.append_text(styled_state(state))
    return line


def show_title(kind: str, resource: Mapping[str, Any]) -> Text:
    """The first line of a `show`: `job 01J…  its-name  running`, the id in bold."""
    title = Text.assemble((f"{kind} ", "bold"), (resource["id"], "bold"))
    if resource.get("name"):
        title.append(f"  {resource['name']}")
    title.append("  ")
    title.append_text(styled_state(resource["status"]))
    return title


def show_grid() -> Table:
    """The rows under a `show` title: a bold label, then its value."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    return grid
