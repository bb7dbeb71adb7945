"""A study of two objectives on real processes (uvicorn, a Celery worker training real trials
on synthetic MNIST, PostgreSQL and Redis): validation accuracy against parameters, sampled
by NSGA-II and pruned by the pareto pruner. Its front is checked from the trials' own
values, and the client shows and draws it."""

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cli.client.plots import FRONT_COLOUR
from testbed.stack import Stack
from tests.figures import figure
from tests.integration.test_studies import create, trials, wait_for_study

pytestmark = pytest.mark.integration

HOPELESS_LR = 1e-6
BASE = {
    "epochs": 3,
    "batch_size": 64,
    "data": {"train_subset": 512, "test_subset": 200, "validation": 200},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "constant"},
}
STUDY = {
    "name": "small-and-good",
    "base": BASE,
    "space": {
        "optimizer.lr": {"type": "categorical", "choices": [0.1, 0.03, HOPELESS_LR]},
        "model.layers[0].out_channels": {"type": "int", "low": 2, "high": 12, "step": 2},
    },
    "objectives": [
        {"metric": "val_accuracy", "direction": "maximize"},
        {"metric": "parameters", "direction": "minimize"},
    ],
    # Seed 3's first generation (sampled before any result, so the same on every run): lr
    # 0.1 at width 6, the hopeless lr at width 10, then 0.03 at 8 and 0.1 at 10. Trial 0
    # completes first (one trial at a time); trial 1 is no smaller and far behind it after
    # its first epoch.
    "sampler": {"name": "nsga2", "seed": 3, "population_size": 4},
    "pruner": {"name": "pareto", "n_warmup_epochs": 1},
    "max_trials": 10,
    "max_parallel_trials": 1,
}


def dominated_by(values: list[float], other: list[float]) -> bool:
    """Whether `other` (val_accuracy, parameters) dominates `values`."""
    no_worse = other[0] >= values[0] and other[1] <= values[1]
    return no_worse and other != values


def test_a_two_objective_study_finds_a_front_and_prunes_a_dominated_trial(
    production_stack: Stack, tmp_path: Path
):
    stack = production_stack
    key = stack.create_key()
    with stack.client(key) as client:
        study = create(client, STUDY)
        done = wait_for_study(client, study["id"])
        assert done["status"] == "succeeded", stack.logs()
        rows = trials(client, study["id"])
        by_pareto = client.get(
            f"/v1/studies/{study['id']}/trials", params={"order": "pareto"}
        ).json()["items"]
        pruned_jobs = [
            client.get(f"/v1/jobs/{t['job_id']}").json() for t in rows if t["state"] == "pruned"
        ]

    assert done["best"] is None
    front = done["pareto"]
    succeeded = [t for t in rows if t["state"] == "succeeded"]
    # No trial of the front is dominated by another trial of the study that trained to its
    # end (a pruned trial's values are those of an unfinished run), and every such trial
    # that no other dominates is on it.
    assert front
    for member in front:
        assert not any(dominated_by(member["values"], o["values"]) for o in succeeded), member
    assert {t["number"] for t in front} == {
        t["number"]
        for t in succeeded
        if not any(dominated_by(t["values"], o["values"]) for o in succeeded)
    }
    assert [t["number"] for t in by_pareto[: len(front)]] == [t["number"] for t in front]

    # The pareto pruner stopped at least one trial early, each dominated at its epoch by a
    # completed trial no larger than it.
    assert pruned_jobs, rows
    for job in pruned_jobs:
        assert job["progress"]["epochs_completed"] < BASE["epochs"]
        assert job["pruned_reason"].startswith("stopped by the pareto pruner after")
        dominator = rows[int(job["pruned_reason"].split("dominated by trial ")[1].split()[0])]
        trial = rows[job["trial"]]
        assert dominator["state"] == "succeeded"
        assert dominator["values"][1] <= trial["values"][1]
    pruned = [t for t in rows if t["state"] == "pruned"]
    assert any(t["params"]["optimizer.lr"] == HOPELESS_LR for t in pruned), rows
    points = ", ".join(f"{t['values'][0]:.3f} at {t['values'][1]:.0f}" for t in front)
    figure(
        f"[studies] two objectives (val_accuracy, parameters), nsga2: {len(rows)} trials, "
        f"front of {len(front)} ({points}), "
        f"{len(pruned)} pruned by pareto after {[t['epochs_completed'] for t in pruned]} of "
        f"{BASE['epochs']} epochs"
    )

    # The client shows the front as a table and draws it.
    shown = stack.client_command(key, "study", "show", study["id"])
    assert shown.returncode == 0, shown.stderr
    assert "objectives   maximize val_accuracy (best epoch)" in shown.stdout
    front_line = next(line for line in shown.stdout.splitlines() if line.startswith("front"))
    assert front_line.split()[1:] == [
        "trial",
        "val_accuracy",
        "parameters",
        "test_accuracy",
        "params",
    ]
    image = tmp_path / "front.png"
    drawn = stack.client_command(key, "study", "plot", study["id"], "-o", str(image))
    assert drawn.returncode == 0, drawn.stderr
    with Image.open(image) as png:
        assert png.format == "PNG"
        red = tuple(int(FRONT_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
        colours: list[tuple[int, Any]] = png.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert sum(count for count, rgb in colours if rgb == red) > 50
