"""What the job commands print for people, rendered from the API's JSON (the job resource,
metrics rows, SSE events): a line per epoch and per progress report, the jobs table, one
job in full, and jobs side by side."""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.client.formatting import (
    format_duration,
    format_seconds,
    format_time,
    format_value,
    plural,
    show_grid,
    show_title,
    state_line,
    styled_state,
)
from cli.client.spec_diff import MISSING, differences

# --- numbers ----------------------------------------------------------------------------


def format_lr(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:.4g}"


def format_speed(images_per_second: float | None) -> str:
    return "—" if images_per_second is None else f"{images_per_second:,.0f} images/s"


def format_json(value: Any) -> str:
    """A spec value as JSON writes it (`true`, `null`, `"sgd"`), floats to 6 digits."""
    if value is MISSING:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def label(job: Mapping[str, Any]) -> str:
    """A job as a legend or a column names it: its name and id, or its id."""
    return f"{job['name']} ({job['id']})" if job.get("name") else str(job["id"])


def took(job: Mapping[str, Any]) -> str:
    """How long it trained: from its start (or submission) to its end; — until it ends."""
    start = job.get("started_at") or job.get("created_at")
    if not job.get("finished_at") or not start:
        return "—"
    return format_duration(start, job["finished_at"])


def is_lr_range_test(job: Mapping[str, Any]) -> bool:
    return job.get("spec", {}).get("kind") == "lr_range_test"


def best_accuracies(best: Mapping[str, Any]) -> str:
    """The best epoch's accuracies: validation first when the job validated, since it chose
    the epoch."""
    text = f"test_accuracy {best['test_accuracy']:.4f}"
    if best.get("val_accuracy") is not None:
        text = f"val_accuracy {best['val_accuracy']:.4f}, {text}"
    return text


def lr_range_result(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    result = job.get("result") or {}
    curve = result.get("lr_range_test")
    return curve if isinstance(curve, Mapping) else None


# --- watch ------------------------------------------------------------------------------


def epoch_line(row: Mapping[str, Any], epochs: int | None = None) -> str:
    """One metrics row: `epoch 0 (1 of 2): train_loss 0.4123 train_accuracy 0.8812 …`.
    Epochs count from 0, as everywhere in the API; the bracket says how far that is."""
    of = f" ({row['epoch'] + 1} of {epochs})" if epochs else ""
    validation = (
        f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.4f} "
        if row.get("val_loss") is not None and row.get("val_accuracy") is not None
        else ""
    )
    return (
        f"epoch {row['epoch']}{of}: "
        f"train_loss {row['train_loss']:.4f} train_accuracy {row['train_accuracy']:.4f} "
        f"{validation}"
        f"test_loss {row['test_loss']:.4f} test_accuracy {row['test_accuracy']:.4f} "
        f"lr {format_lr(row.get('lr'))} {row['epoch_seconds']:.1f} s"
    )


def progress_title(progress: Mapping[str, Any]) -> str:
    if progress.get("phase") == "lr_range_test":
        return "LR range test"
    return f"epoch {progress.get('epoch', '?')}"


def progress_line(progress: Mapping[str, Any]) -> str:
    """One `progress` event, for logs: `epoch 0: batch 5/8, 1,234 images/s, ETA 3s`."""
    parts = [f"batch {progress.get('batches_completed', '?')}/{progress.get('batches', '?')}"]
    # 0 before the first batch is no pace yet.
    if progress.get("images_per_second"):
        parts.append(format_speed(progress["images_per_second"]))
    if progress.get("eta_seconds") is not None:
        parts.append(f"ETA {format_seconds(progress['eta_seconds'])}")
    return f"{progress_title(progress)}: {', '.join(parts)}"


def summary_line(job: Mapping[str, Any]) -> Text:
    """How a job ended, in one line: its best epoch, or why it failed or stopped."""
    line = state_line("job", job["id"], job["status"])
    progress = job.get("progress") or {}
    done = f"{progress.get('epochs_completed', 0)} of {plural(progress.get('epochs', 0), 'epoch')}"
    curve = lr_range_result(job)
    if curve is not None:
        line.append(
            f": suggested lr {format_lr(curve.get('suggested_lr'))}, "
            f"lowest loss at lr {format_lr(curve.get('min_loss_lr'))}"
        )
    elif job.get("best"):
        best = job["best"]
        if best.get("val_accuracy") is not None:
            line.append(
                f": best val_accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']} "
                f"(test_accuracy {best['test_accuracy']:.4f}), {done}"
            )
        else:
            line.append(
                f": best test_accuracy {best['test_accuracy']:.4f} at epoch {best['epoch']}, {done}"
            )
    else:
        line.append(f": {done}")
    if job.get("finished_at"):
        line.append(f" in {took(job)}")
    error = job.get("error")
    if error:
        line.append(f"; {error.get('type', 'error')}: {error.get('message', '')}")
    if job.get("pruned_reason"):
        line.append(f"; {job['pruned_reason']}")
    return line


# --- jobs -------------------------------------------------------------------------------


def epochs_cell(job: Mapping[str, Any]) -> str:
    if is_lr_range_test(job):
        # It trains no epochs: its sweep is one pass of batches.
        return "—"
    progress = job.get("progress") or {}
    cell = f"{progress.get('epochs_completed', 0)}/{progress.get('epochs', '?')}"
    if job.get("status") == "running" and progress.get("batches"):
        cell += f" ({progress.get('batches_completed', 0)}/{progress['batches']})"
    return cell


def best_cell(job: Mapping[str, Any]) -> str:
    curve = lr_range_result(job)
    if curve is not None:
        return f"lr {format_lr(curve.get('suggested_lr'))}"
    best = job.get("best")
    return f"{best['test_accuracy']:.4f} @{best['epoch']}" if best else "—"


def format_minute(text: str | None) -> str:
    return format_time(text).removesuffix(":00 UTC")[:16] if text else "—"


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    """A row per job: id, name, status, tags, epochs, best test accuracy and its epoch (an
    LR range test's suggested lr) and when it was submitted (UTC). It fits 100 columns;
    narrower, the other columns give way to the id, which is never cut."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    longest = max((len(job["id"]) for job in jobs), default=2)
    table.add_column("id", no_wrap=True, min_width=longest)
    # Folded, never dropped, when the terminal is narrow: a name and tags are data.
    table.add_column("name", overflow="fold", min_width=8)
    table.add_column("status", no_wrap=True)
    table.add_column("tags", overflow="fold", min_width=6)
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("best", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for job in jobs:
        table.add_row(
            job["id"],
            job.get("name") or "",
            styled_state(job["status"]),
            ", ".join(job.get("tags") or []),
            epochs_cell(job),
            best_cell(job),
            format_minute(job.get("created_at")),
        )
    return table


# --- show -------------------------------------------------------------------------------


def _checkpoints(checkpoints: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    validated = any(checkpoint.get("val_accuracy") is not None for checkpoint in checkpoints)
    for header, justify in (
        ("name", "left"),
        ("epoch", "right"),
        *([("val_accuracy", "right")] if validated else []),
        ("test_accuracy", "right"),
        ("bytes", "right"),
        ("sha256", "left"),
    ):
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for checkpoint in checkpoints:
        table.add_row(
            checkpoint["name"],
            str(checkpoint["epoch"]),
            *([format_value(checkpoint.get("val_accuracy"))] if validated else []),
            format_value(checkpoint.get("test_accuracy")),
            f"{checkpoint['bytes']:,}",
            # The start is enough to tell them apart; `show --json` has it whole.
            checkpoint["sha256"][:16] + "…",
        )
    return table


def _model_line(job: Mapping[str, Any]) -> str:
    spec = job.get("spec") or {}
    model = spec.get("model") or {}
    analysis = job.get("analysis") or {}
    layers = model.get("layers") or []
    named = f"preset {model['preset']}, " if model.get("preset") else ""
    return (
        f"{named}{plural(len(layers), 'layer')}, {analysis.get('parameters', 0):,} parameters, "
        f"receptive field {analysis.get('receptive_field', '?')}, "
        f"{analysis.get('multiply_adds', 0):,} multiply-adds"
    )


def job_view(job: Mapping[str, Any]) -> RenderableType:
    """The job resource for a person: status, times, progress, model, best and latest
    epoch, checkpoints, and why it failed."""
    title = show_title("job", job)
    grid = show_grid()
    if job.get("tags"):
        grid.add_row("tags", ", ".join(job["tags"]))
    if job.get("study_id"):
        grid.add_row("study", f"{job['study_id']}, trial {job.get('trial')}")
    grid.add_row("created", format_time(job.get("created_at")))
    if job.get("started_at"):
        grid.add_row("started", format_time(job["started_at"]))
    if job.get("finished_at"):
        grid.add_row("finished", f"{format_time(job['finished_at'])} (after {took(job)})")
    if job.get("worker"):
        grid.add_row("worker", f"{job['worker']}, {plural(job.get('attempts', 0), 'attempt')}")
    progress = job.get("progress") or {}
    line = f"{progress.get('epochs_completed', 0)} of {plural(progress.get('epochs', 0), 'epoch')}"
    if progress.get("batches"):
        line += f"; {progress_line({**progress, 'epoch': progress.get('epochs_completed')})}"
    grid.add_row("progress", line)
    grid.add_row("model", _model_line(job))
    curve = lr_range_result(job)
    if curve is not None:
        points = plural(len(curve.get("points") or []), "point")
        found = (
            f"suggested lr {format_lr(curve.get('suggested_lr'))}, "
            f"lowest loss at lr {format_lr(curve.get('min_loss_lr'))}, {points}"
        )
        if curve.get("diverged_at_lr"):
            found += f", diverged at lr {format_lr(curve['diverged_at_lr'])}"
        grid.add_row("lr range test", found)
    best = job.get("best")
    if best:
        grid.add_row("best", f"epoch {best['epoch']}: {best_accuracies(best)}")
    latest = job.get("latest_metrics")
    if latest:
        grid.add_row("latest", epoch_line(latest, progress.get("epochs")))
    if job.get("checkpoints"):
        grid.add_row("checkpoints", _checkpoints(job["checkpoints"]))
    error = job.get("error")
    if error:
        message = f"{error.get('type', 'error')}: {error.get('message', '')}"
        grid.add_row("error", Text(message, style="red"))
    if job.get("pruned_reason"):
        grid.add_row("pruned", job["pruned_reason"])
    return Group(title, grid)


# --- compare ----------------------------------------------------------------------------


def _side_by_side(jobs: Sequence[Mapping[str, Any]], first: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column(first, no_wrap=True)
    for job in jobs:
        header = job["id"] + (f"\n{job['name']}" if job.get("name") else "")
        table.add_column(header, overflow="fold")
    return table


def spec_differences(jobs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Where the jobs' stored specs differ, path by path (the name left out: each job's
    column already names it)."""
    found = differences([job.get("spec") or {} for job in jobs])
    found.pop("name", None)
    return found


def result_rows(job: Mapping[str, Any]) -> dict[str, str]:
    progress = job.get("progress") or {}
    best = job.get("best")
    curve = lr_range_result(job)
    rows = {
        "status": job["status"],
        "epochs": f"{progress.get('epochs_completed', 0)}/{progress.get('epochs', '?')}",
        "best test_accuracy": f"{best['test_accuracy']:.4f}" if best else "—",
        "best epoch": str(best["epoch"]) if best else "—",
        "duration": took(job),
        "parameters": f"{(job.get('analysis') or {}).get('parameters', 0):,}",
    }
    if best and best.get("val_accuracy") is not None:
        rows["best val_accuracy"] = format_value(best["val_accuracy"])
    if curve is not None:
        rows["suggested lr"] = format_lr(curve.get("suggested_lr"))
    return rows


def compare_view(jobs: Sequence[Mapping[str, Any]]) -> RenderableType:
    """Where the specs differ (only the differing paths), then the results, a column per
    job."""
    found = spec_differences(jobs)
    parts: list[RenderableType] = []
    if found:
        specs = _side_by_side(jobs, "spec")
        for path, values in found.items():
            specs.add_row(path, *(format_json(value) for value in values))
        parts.append(specs)
    else:
        parts.append(Text("the specs are the same (but for their names)"))
    results = _side_by_side(jobs, "result")
    per_job = [result_rows(job) for job in jobs]
    names = list(dict.fromkeys(name for rows in per_job for name in rows))
    for name in names:
        cells: list[str | Text] = [rows.get(name, "—") for rows in per_job]
        if name == "status":
            cells = [styled_state(str(cell)) for cell in cells]
        results.add_row(name, *cells)
    parts += [Text(""), results]
    return Group(*parts)


def compare_json(jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The comparison for scripts: the differing paths (null where a spec lacks one) and
    each job's results."""
    found = spec_differences(jobs)
    return {
        "jobs": [job["id"] for job in jobs],
        "differences": {
            path: [None if value is MISSING else value for value in values]
            for path, values in found.items()
        },
        "results": [
            {
                "id": job["id"],
                "status": job["status"],
                "epochs_completed": (job.get("progress") or {}).get("epochs_completed"),
                "epochs": (job.get("progress") or {}).get("epochs"),
                "best": job.get("best"),
                "started_at": job.get("started_at"),
                "finished_at": job.get("finished_at"),
            }
            for job in jobs
        ],
    }
