"""What every client command prints alike: the consoles, times, durations, counts and the
colour of a status."""

from datetime import datetime

from rich.console import Console
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
