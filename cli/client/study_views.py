"""What the study commands print for people: a study, its leaderboard and a line per event,
rendered with rich from the API's JSON (the study resource, trial rows, SSE events)."""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.client.formatting import (
    format_duration,
    format_time,
    format_value,
    plural,
    show_grid,
    show_title,
    state_line,
    styled_state,
)
from cli.client.server_events import ServerEvent

TRIAL_STATES = ("queued", "running", "succeeded", "pruned", "infeasible", "failed", "cancelled")


# --- formatting -------------------------------------------------------------------------


def format_param(value: Any) -> str:
    """A parameter's value as JSON writes it (`true`, `{"name":"step"}`), floats to 4 digits."""
    if isinstance(value, dict | list | bool) or value is None:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(params: Mapping[str, Any], separator: str = ", ") -> str:
    return separator.join(f"{path}={format_param(value)}" for path, value in params.items())


def format_counts(counts: Mapping[str, int]) -> str:
    parts = [f"{counts[state]} {state}" for state in TRIAL_STATES if counts.get(state)]
    return f"{counts.get('total', 0)} total" + (f": {', '.join(parts)}" if parts else "")


STATIC_METRICS = ("parameters", "multiply_adds")


def metric_of(study: Mapping[str, Any]) -> str:
    """The (first) objective's metric."""
    return str(objectives_of(study)[0]["metric"])


def objectives_of(study: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The study's objectives in order: `objectives`, or `objective` alone (as a study
    stored before `objectives` existed has it)."""
    spec = study["spec"]
    return list(spec.get("objectives") or [spec["objective"]])


def is_multi_objective(study: Mapping[str, Any]) -> bool:
    return len(objectives_of(study)) > 1


def format_metric(metric: str, value: float | None) -> str:
    """A value as its metric reads best: a count whole, with thousands separated."""
    if value is not None and metric in STATIC_METRICS:
        return f"{value:,.0f}"
    return format_value(value)


def format_values(objectives: Sequence[Mapping[str, Any]], values: Sequence[float] | None) -> str:
    """`val_accuracy 0.9512, parameters 7,014`; a dash for each value not known yet."""
    known = list(values) if values else [None] * len(objectives)
    return ", ".join(
        f"{objective['metric']} {format_metric(objective['metric'], value)}"
        for objective, value in zip(objectives, known, strict=False)
    )


def format_objective(objective: Mapping[str, Any]) -> str:
    if objective["metric"] in STATIC_METRICS:
        return f"{objective['direction']} {objective['metric']}"
    return f"{objective['direction']} {objective['metric']} ({objective['reduce']} epoch)"


def trial_result(study: Mapping[str, Any], trial: Mapping[str, Any]) -> str:
    """What a trial scored: its objective (or each of its objectives)."""
    if is_multi_objective(study):
        return format_values(objectives_of(study), trial.get("values"))
    return f"{metric_of(study)} {format_value(trial.get('value'))}"


def planned_epochs(study: Mapping[str, Any], params: Mapping[str, Any]) -> int | None:
    """The epochs a trial trains: its sampled `epochs`, else the base spec's."""
    epochs = params.get("epochs", study["spec"].get("base", {}).get("epochs"))
    return epochs if isinstance(epochs, int) else None


def trial_note(trial: Mapping[str, Any]) -> str:
    """The reason column: why it was pruned, infeasible or failed; what a confirmation run
    re-runs."""
    notes = []
    if trial.get("confirms") is not None:
        notes.append(f"confirms trial {trial['confirms']}, seed {trial.get('seed')}")
    if trial.get("reason"):
        notes.append(str(trial["reason"]))
    return "; ".join(notes)


# --- study show ---------------------------------------------------------------------------


def _importances(importances: Mapping[str, float]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right")
    grid.add_column()
    for path, share in sorted(importances.items(), key=lambda item: -item[1]):
        grid.add_row(path, f"{share:.2f}", Text("█" * round(share * 20), style="blue"))
    return grid


def _confirmed(metric: str, confirmed: Sequence[Mapping[str, Any]], refit: bool) -> Table:
    """The confirmed configurations: with refit, each one's test accuracy over its runs on
    every training image, in the order the search chose them; without, the objective's mean
    over seeds, best first."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    scores = (
        [("test mean ± std", "right"), ("min last 3", "right")]
        if refit
        else [(f"{metric} mean ± std", "right")]
    )
    for header, justify in (
        ("#" if refit else "rank", "right"),
        ("trial", "right"),
        *scores,
        ("runs", "right"),
        ("parameters", "right"),
        ("params", "left"),
    ):
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for rank, configuration in enumerate(confirmed, start=1):
        if refit:
            shown = [
                _mean_std(configuration.get("test_mean"), configuration.get("test_std")),
                format_value(configuration.get("test_min_last3")),
            ]
        else:
            shown = [_mean_std(configuration.get("mean"), configuration.get("std"))]
        table.add_row(
            str(rank),
            str(configuration["trial"]),
            *shown,
            str(configuration["n"]),
            format_metric("parameters", configuration.get("parameters")),
            format_params(configuration["params"], "\n"),
        )
    return table


def _mean_std(mean: float | None, std: float | None) -> str:
    return "—" if mean is None else f"{mean:.4f} ± {std or 0.0:.4f}"


def front_table(
    objectives: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]]
) -> Table:
    """The Pareto front, a row per trial: its values, its test accuracy, its params."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("trial", justify="right", no_wrap=True)
    for objective in objectives:
        table.add_column(objective["metric"], justify="right", no_wrap=True)
    table.add_column("test_accuracy", justify="right", no_wrap=True)
    table.add_column("params", overflow="fold")
    for trial in front:
        table.add_row(
            str(trial["number"]),
            *[
                format_metric(objective["metric"], value)
                for objective, value in zip(objectives, trial["values"], strict=False)
            ],
            format_value(trial.get("test_accuracy")),
            format_params(trial["params"], "\n"),
        )
    return table


def study_view(study: Mapping[str, Any]) -> RenderableType:
    """The study resource for a person: status, counts, best trial (or the front of a study
    of several objectives), importances, and the confirmed ranking."""
    spec = study["spec"]
    objectives = objectives_of(study)
    metric = metric_of(study)
    title = show_title("study", study)
    grid = show_grid()
    grid.add_row("created", format_time(study["created_at"]))
    if study.get("finished_at"):
        took = format_duration(study["created_at"], study["finished_at"])
        grid.add_row("finished", f"{format_time(study['finished_at'])} (after {took})")
    grid.add_row(
        "objectives" if len(objectives) > 1 else "objective",
        "\n".join(format_objective(objective) for objective in objectives),
    )
    pruner = "no" if spec["pruner"]["name"] == "none" else spec["pruner"]["name"]
    grid.add_row(
        "search",
        f"{spec['sampler']['name']} sampler, {pruner} pruner, "
        f"up to {spec['max_trials']} trials, {spec['max_parallel_trials']} at a time",
    )
    grid.add_row("trials", format_counts(study["trials"]))
    if study.get("warm_trials"):
        source = (spec.get("warm_start") or {}).get("study_id", "another study")
        grid.add_row("warm start", f"{study['warm_trials']} finished trials of {source}")
    best = study.get("best")
    if len(objectives) > 1:
        front = study.get("pareto")
        grid.add_row("front", front_table(objectives, front) if front else "none yet")
    elif best:
        line = f"trial {best['trial']}: {metric} {format_value(best['value'])}"
        if best.get("test_accuracy") is not None:
            line += f" (test_accuracy {format_value(best['test_accuracy'])})"
        lines = [line, *[f"  {path} = {format_param(v)}" for path, v in best["params"].items()]]
        grid.add_row("best", "\n".join(lines))
    else:
        grid.add_row("best", "none yet")
    importances = study.get("importances")
    grid.add_row("importances", _importances(importances) if importances else "not yet")
    if spec.get("confirm"):
        confirmed = study.get("confirmed")
        grid.add_row(
            "confirmed",
            _confirmed(metric, confirmed, spec["confirm"].get("refit", True))
            if confirmed
            else "not yet",
        )
    if study.get("error"):
        grid.add_row("error", Text(str(study["error"].get("message", "")), style="red"))
    return Group(title, grid)


# --- study trials -------------------------------------------------------------------------


def trials_table(study: Mapping[str, Any], trials: Sequence[Mapping[str, Any]]) -> Table:
    """The leaderboard: number, state, each objective, the test accuracy reported beside
    them, epochs, params, reason; a study of several objectives marks its front."""
    objectives = objectives_of(study)
    multi = len(objectives) > 1
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for objective in objectives:
        table.add_column(objective["metric"], justify="right", no_wrap=True)
    table.add_column("test_accuracy", justify="right", no_wrap=True)
    if multi:
        table.add_column("front", justify="center", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    # Folded, never cut: a parameter's value is data (an object choice is one long word).
    table.add_column("params", overflow="fold")
    table.add_column("reason", overflow="fold")
    for trial in trials:
        planned = planned_epochs(study, trial["params"])
        epochs = f"{trial['epochs_completed']}/{planned}" if planned else trial["epochs_completed"]
        if multi:
            values = trial.get("values") or [None] * len(objectives)
            shown = [
                format_metric(objective["metric"], value)
                for objective, value in zip(objectives, values, strict=False)
            ]
            shown += [
                format_value(trial.get("test_accuracy")),
                "*" if trial.get("pareto_rank") == 0 else "",
            ]
        else:
            shown = [format_value(trial.get("value")), format_value(trial.get("test_accuracy"))]
        table.add_row(
            str(trial["number"]),
            styled_state(trial["state"]),
            *shown,
            str(epochs),
            format_params(trial["params"], "\n"),
            trial_note(trial),
        )
    return table


# --- study watch --------------------------------------------------------------------------


def event_line(
    study: Mapping[str, Any], event: ServerEvent, introduce: bool = False
) -> Text | None:
    """One line for one event of GET /v1/studies/{id}/events (`status` is the caller's);
    `introduce` adds the trial's params, for the first line of a trial whose `trial_queued`
    the stream never sent (it polls: a trial can start between two looks)."""
    trial = event.data
    if event.event == "status" or not isinstance(trial, dict) or "number" not in trial:
        return None
    line = Text(f"trial {trial['number']} ")
    state = trial.get("state", "")
    epochs = trial.get("epochs_completed", 0)
    if event.event == "trial_queued":
        line.append_text(styled_state("queued"))
        line.append(f": {format_params(trial['params'])}")
        if trial.get("confirms") is not None:
            line.append(f" ({trial_note(trial)})")
    elif event.event == "trial_started":
        line.append_text(styled_state("started"))
    elif event.event == "epoch":
        planned = planned_epochs(study, trial["params"])
        of = f"/{planned}" if planned else ""
        line.append(f"epoch {epochs}{of}: {trial_result(study, trial)}")
    elif event.event in ("trial_pruned", "trial_finished"):
        line.append_text(styled_state(state))
        if state == "succeeded":
            line.append(f": {trial_result(study, trial)} after {plural(epochs, 'epoch')}")
        if trial.get("reason"):
            line.append(f": {trial['reason']}")
        elif state == "pruned":
            line.append(f" after {plural(epochs, 'epoch')}")
    else:
        return None
    if introduce and event.event != "trial_queued":
        line.append(f" with {format_params(trial['params'])}")
    return line


def summary_line(study: Mapping[str, Any]) -> Text:
    line = state_line("study", study["id"], study["status"])
    line.append(f"; trials {format_counts(study['trials'])}")
    best = study.get("best")
    front = study.get("pareto")
    if best:
        line.append(
            f"; best trial {best['trial']}, {metric_of(study)} {format_value(best['value'])} "
            f"with {format_params(best['params'])}"
        )
    elif front:
        numbers = ", ".join(str(trial["number"]) for trial in front)
        line.append(f"; front of {plural(len(front), 'trial')}: {numbers}")
    if study.get("error"):
        line.append(f"; {study['error'].get('message', '')}")
    return line
