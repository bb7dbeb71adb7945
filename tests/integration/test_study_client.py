"""The study client commands on the real stack: `python -m cli.main study …` as a user runs
it, against uvicorn, a Celery worker training real trials, PostgreSQL and Redis."""

import json
import subprocess
from pathlib import Path

import optuna
import pytest

from cli.client.optuna_export import journal_storage
from testbed.stack import Stack, wait_until

pytestmark = pytest.mark.integration

BASE = {
    "epochs": 2,
    "batch_size": 64,
    "data": {"train_subset": 512, "test_subset": 200, "validation": 200},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "constant"},
}
STUDY = {
    "name": "client-grid",
    "base": BASE,
    "space": {"batch_size": {"type": "categorical", "choices": [32, 64]}},
    "sampler": {"name": "grid", "seed": 1},
    "pruner": {"name": "asha", "min_epochs": 1, "reduction_factor": 2},
    "max_trials": 2,
}
OPTUNA_STATES = {"succeeded": "COMPLETE", "pruned": "PRUNED"}


def study_command(
    stack: Stack, key: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return stack.client_command(key, "study", *args, timeout=timeout)


def load_export(path: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=journal_storage(path)).get_trials()


def test_create_watch_show_trials_export_and_cancel(production_stack: Stack, tmp_path: Path):
    stack = production_stack
    key = stack.create_key()
    (tmp_path / "study.json").write_text(json.dumps(STUDY))

    created = study_command(stack, key, "create", str(tmp_path / "study.json"), "--watch")
    assert created.returncode == 0, created.stderr + stack.logs()
    # Only the id on stdout, so `S=$(tunelab study create s.json --watch)` works; the
    # progress is on stderr.
    study_id = created.stdout.strip()
    assert study_id.startswith("stu_") and "\n" not in study_id
    assert f"study {study_id} succeeded" in created.stderr
    assert "trial 0 " in created.stderr and "trial 1 " in created.stderr

    with stack.client(key) as client:
        study = client.get(f"/v1/studies/{study_id}").json()
        trials = client.get(f"/v1/studies/{study_id}/trials").json()["items"]
        metrics = {
            t["job_id"]: client.get(f"/v1/jobs/{t['job_id']}/metrics").json()["items"]
            for t in trials
        }
    assert study["status"] == "succeeded"
    assert len(trials) == 2 and {t["state"] for t in trials} <= set(OPTUNA_STATES)

    # Watching a study that has ended replays it and exits by its status.
    watched = study_command(stack, key, "watch", study_id, timeout=60)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.splitlines()[-1].startswith(f"study {study_id} succeeded")

    shown = study_command(stack, key, "show", study_id)
    assert shown.returncode == 0, shown.stderr
    best = study["best"]
    assert shown.stdout.splitlines()[0].split() == ["study", study_id, "client-grid", "succeeded"]
    assert f"trial {best['trial']}: val_accuracy {best['value']:.4f}" in shown.stdout
    assert f"batch_size = {best['params']['batch_size']}" in shown.stdout
    counts = study["trials"]
    assert f"trials       2 total: {counts['succeeded']} succeeded" in shown.stdout

    as_json = study_command(stack, key, "show", study_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["trials"] == counts

    ranked = study_command(stack, key, "trials", study_id, "--order", "value")
    assert ranked.returncode == 0, ranked.stderr
    rows = [line.split() for line in ranked.stdout.splitlines()[2:] if line.strip()]
    with stack.client(key) as client:
        by_value = client.get(f"/v1/studies/{study_id}/trials", params={"order": "value"})
    expected = [
        [
            str(t["number"]),
            t["state"],
            f"{t['value']:.4f}",
            f"{t['test_accuracy']:.4f}",
            f"{t['epochs_completed']}/2",
        ]
        for t in by_value.json()["items"]
    ]
    assert [row[:5] for row in rows] == expected
    assert all(f"batch_size={t['params']['batch_size']}" in ranked.stdout for t in trials)

    exported_path = tmp_path / "x.db"
    exported = study_command(stack, key, "export", study_id, "-o", str(exported_path))
    assert exported.returncode == 0, exported.stderr
    assert f"optuna-dashboard {exported_path}" in exported.stdout
    exported_trials = load_export(exported_path, "client-grid")
    assert len(exported_trials) == len(trials)
    for frozen, trial in zip(exported_trials, trials, strict=True):
        rows_of_job = metrics[trial["job_id"]]
        assert frozen.number == trial["number"]
        assert frozen.params == trial["params"]
        assert frozen.state.name == OPTUNA_STATES[trial["state"]]
        assert frozen.intermediate_values == {
            row["epoch"] + 1: row["val_accuracy"] for row in rows_of_job
        }
        assert frozen.user_attrs["job_id"] == trial["job_id"]
        if trial["state"] == "succeeded":
            assert frozen.value == trial["value"]
    again = study_command(stack, key, "export", study_id, "-o", str(exported_path))
    assert again.returncode == 1 and "--force" in again.stderr

    cancelled = study_command(stack, key, "cancel", study_id)
    assert cancelled.returncode == 1
    assert cancelled.stderr.strip() == (
        f"tunelab: Study cannot be cancelled: study {study_id} is already succeeded"
    )


def test_cancel_and_watch_a_running_study(production_stack: Stack, tmp_path: Path):
    stack = production_stack
    key = stack.create_key()
    long = {**STUDY, "name": "client-cancel", "base": {**BASE, "epochs": 20}}
    (tmp_path / "study.json").write_text(json.dumps(long))
    created = study_command(stack, key, "create", str(tmp_path / "study.json"))
    assert created.returncode == 0, created.stderr
    study_id = created.stdout.strip()

    def trial_running() -> bool:
        with stack.client(key) as client:
            items = client.get(f"/v1/studies/{study_id}/trials").json()["items"]
        return any(t["state"] == "running" for t in items)

    wait_until(trial_running, 120, "a trial to start")
    with stack.running_client_command(key, "study", "watch", study_id) as watcher:
        cancelled = study_command(stack, key, "cancel", study_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.startswith(f"study {study_id} cancelled")
        out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 1, err
    assert out.splitlines()[-1].startswith(f"study {study_id} cancelled")
