"""`tunelab plot`: learning curves of jobs as an image file, drawn by matplotlib without a
display (a Figure of its own, rendered by Agg: no pyplot, no window, no global state).

Training jobs get three panels, loss, accuracy and learning rate per epoch, train dashed,
validation dotted (for jobs that hold images out) and test solid, one colour per job. An LR
range test gets its loss-versus-lr curve on a log axis, the raw loss faint under the smoothed
one, with its suggestion marked.

`tunelab study plot` draws a study of several objectives: each trial's epoch objective
(accuracy) against its static one (parameters), the front joined and marked in FRONT_COLOUR,
each of its trials numbered.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cli.client.job_views import format_lr, label, lr_range_result

PANEL_INCHES = (5.0, 4.0)
DPI = 100
FRONT_INCHES = (7.0, 5.0)
FRONT_COLOUR = "#d62728"
STATIC_METRICS = ("parameters", "multiply_adds")


@dataclass(frozen=True)
class Curves:
    """What one job has to draw: its metrics rows, or its LR range test."""

    job: Mapping[str, Any]
    rows: Sequence[Mapping[str, Any]]

    @property
    def name(self) -> str:
        return label(self.job)

    @property
    def lr_range(self) -> Mapping[str, Any] | None:
        curve = lr_range_result(self.job)
        return curve if curve and curve.get("points") else None


def _epochs(axes: Axes, title: str) -> None:
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)


def _training(panels: Sequence[Axes], curves: Sequence[Curves], colours: list[str]) -> None:
    loss, accuracy, lr = panels
    _epochs(loss, "loss")
    _epochs(accuracy, "accuracy")
    _epochs(lr, "learning rate")
    lrs: list[float] = []
    validated = False
    for job, colour in zip(curves, colours, strict=True):
        epochs = [row["epoch"] for row in job.rows]
        for axes, metric in ((loss, "loss"), (accuracy, "accuracy")):
            axes.plot(epochs, [row[f"train_{metric}"] for row in job.rows], "--", color=colour)
            validation = [row.get(f"val_{metric}") for row in job.rows]
            if any(value is not None for value in validation):
                validated = True
                values = [math.nan if value is None else value for value in validation]
                axes.plot(epochs, values, ":", color=colour)
            axes.plot(
                epochs,
                [row[f"test_{metric}"] for row in job.rows],
                "-",
                marker="o",
                color=colour,
                label=job.name,
            )
        lr.plot(epochs, [row["lr"] for row in job.rows], "-", marker="o", color=colour)
        lrs += [row["lr"] for row in job.rows if row["lr"] > 0]
    # A schedule that spans decades (step decay, one-cycle) reads better on a log axis.
    if lrs and max(lrs) / min(lrs) > 20:
        lr.set_yscale("log")
    loss.plot([], [], "--", color="grey", label="train")
    if validated:
        loss.plot([], [], ":", color="grey", label="validation")
    loss.plot([], [], "-", color="grey", label="test")
    loss.legend(fontsize="small")


def _lr_range(axes: Axes, curves: Sequence[Curves], colours: list[str]) -> None:
    axes.set_title("LR range test")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("loss")
    axes.set_xscale("log")
    axes.grid(True, alpha=0.3)
    for job, colour in zip(curves, colours, strict=True):
        curve = job.lr_range
        assert curve is not None
        points = curve["points"]
        lrs = [point["lr"] for point in points]
        axes.plot(lrs, [point["loss"] for point in points], color=colour, alpha=0.25)
        axes.plot(lrs, [point["smoothed_loss"] for point in points], color=colour, label=job.name)
        suggested = curve.get("suggested_lr")
        if suggested:
            axes.axvline(
                suggested,
                color=colour,
                linestyle="--",
                label=f"suggested lr {format_lr(suggested)}",
            )
        lowest = curve.get("min_loss_lr")
        if lowest:
            nearest = min(points, key=lambda point: abs(point["lr"] - lowest))
            axes.plot(
                [lowest],
                [nearest["smoothed_loss"]],
                "v",
                color=colour,
                label=f"lowest loss at lr {format_lr(lowest)}",
            )
    axes.legend(fontsize="small")


def plot(curves: Sequence[Curves], output: Path) -> None:
    """Draws the jobs' curves into `output` (PNG, or any format matplotlib writes by the
    suffix: .svg, .pdf)."""
    training = [job for job in curves if job.lr_range is None and job.rows]
    ranges = [job for job in curves if job.lr_range is not None]
    if not training and not ranges:
        raise ValueError("none of the jobs has an epoch or an LR range test to plot")
    count = (3 if training else 0) + (1 if ranges else 0)
    figure = Figure(figsize=(PANEL_INCHES[0] * count, PANEL_INCHES[1]), dpi=DPI)
    panels = list(figure.subplots(1, count, squeeze=False)[0])
    palette = [f"C{index % 10}" for index in range(len(curves))]
    colour_of = {id(job): colour for job, colour in zip(curves, palette, strict=True)}
    if training:
        _training(panels[:3], training, [colour_of[id(job)] for job in training])
    if ranges:
        _lr_range(panels[-1], ranges, [colour_of[id(job)] for job in ranges])
    figure.tight_layout()
    figure.savefig(output)


def front_axes(objectives: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Which objectives a front is drawn against: x, the first static objective (parameters,
    multiply-adds) or else the second objective; y, the first measured by training."""
    metrics = [str(objective["metric"]) for objective in objectives]
    y = next(i for i, metric in enumerate(metrics) if metric not in STATIC_METRICS)
    static = [i for i, metric in enumerate(metrics) if metric in STATIC_METRICS]
    x = static[0] if static else next(i for i in range(len(metrics)) if i != y)
    return x, y


def plot_front(
    objectives: Sequence[Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    output: Path,
    title: str,
) -> None:
    """Draws every trial with values (GET /v1/studies/{id}/trials) as a point, pruned ones
    hollow at the values they stopped with, and the front (the study's `pareto`) joined and
    marked, into `output`."""
    if len(objectives) < 2:
        raise ValueError("a front needs two objectives or more; this study has one")
    x, y = front_axes(objectives)
    scored = [t for t in trials if t.get("values") and t.get("confirms") is None]
    if not scored:
        raise ValueError("no trial has a value of every objective yet")
    figure = Figure(figsize=FRONT_INCHES, dpi=DPI)
    axes = figure.subplots()
    axes.set_title(title)
    axes.set_xlabel(f"{objectives[x]['metric']} ({objectives[x]['direction']})")
    axes.set_ylabel(f"{objectives[y]['metric']} ({objectives[y]['direction']})")
    axes.grid(True, alpha=0.3)
    # Succeeded trials filled; pruned ones hollow, at the values they stopped with.
    for state, fill in (("succeeded", "C0"), ("pruned", "none")):
        points = [t["values"] for t in scored if t["state"] == state]
        if points:
            axes.scatter(
                [p[x] for p in points],
                [p[y] for p in points],
                facecolors=fill,
                edgecolors="C0",
                label=f"{state} ({len(points)})",
            )
    ends = sorted(front, key=lambda t: (t["values"][x], t["values"][y]))
    if ends:
        axes.plot(
            [t["values"][x] for t in ends],
            [t["values"][y] for t in ends],
            "-o",
            color=FRONT_COLOUR,
            label=f"front ({len(ends)})",
        )
        # Trials of the same values (a configuration sampled again) share one label.
        labels: dict[tuple[float, float], list[str]] = {}
        for trial in ends:
            labels.setdefault((trial["values"][x], trial["values"][y]), []).append(
                str(trial["number"])
            )
        for point, numbers in labels.items():
            axes.annotate(
                ", ".join(numbers),
                point,
                textcoords="offset points",
                xytext=(4, 4),
                fontsize="small",
                color=FRONT_COLOUR,
            )
    xs = [t["values"][x] for t in scored]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        axes.set_xscale("log")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output)
