"""Studies that start from what is known, confirmed on every training image, on real
processes (uvicorn, a Celery worker training real trials on synthetic MNIST, PostgreSQL and
Redis): `enqueue` runs its configurations first, `warm_start` tells an earlier study's trials
to the sampler without training them again, and `confirm.refit` trains the chosen
configuration again on every image and reports its test accuracy."""

import statistics
from typing import Any

import httpx
import pytest

from testbed.stack import Stack
from tests.figures import figure
from tests.integration.test_studies import BASE, create, trials, wait_for_study

pytestmark = pytest.mark.integration

QUICK_BASE = {**BASE, "epochs": 3, "data": {**BASE["data"], "train_subset": 256}}
WIDTH = "model.layers[0].out_channels"
LR = "optimizer.lr"
# Four points: a study of two leaves two for the study it warm-starts.
WIDTHS_GRID = {
    "base": QUICK_BASE,
    "space": {WIDTH: {"type": "int", "low": 4, "high": 16, "step": 4}},
    "sampler": {"name": "grid", "seed": 5},
    "max_trials": 2,
}


def job_with_metrics(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = client.get(f"/v1/jobs/{job_id}").json()
    job["metrics"] = client.get(f"/v1/jobs/{job_id}/metrics").json()["items"]
    return job


def tenant_jobs(client: httpx.Client) -> list[dict[str, Any]]:
    return client.get("/v1/jobs", params={"limit": 100}).json()["items"]


def test_enqueue_then_a_warm_start_then_refit(production_stack: Stack):
    stack = production_stack
    with stack.client(stack.create_key()) as client:
        # Enqueued configurations run first, exactly as given, before anything is sampled.
        enqueued = [{LR: 0.08, WIDTH: 6}, {LR: 0.02, WIDTH: 10}]
        first = create(
            client,
            {
                "name": "enqueued",
                "base": QUICK_BASE,
                "space": {
                    LR: {"type": "float", "low": 0.01, "high": 0.1, "log": True},
                    WIDTH: {"type": "int", "low": 4, "high": 12, "step": 2},
                },
                "sampler": {"name": "tpe", "seed": 2},
                "enqueue": enqueued,
                "max_trials": 3,
            },
        )
        done = wait_for_study(client, first["id"])
        assert done["status"] == "succeeded", stack.logs()
        rows = trials(client, first["id"])
        assert [t["params"] for t in rows[:2]] == enqueued
        assert len(rows) == 3 and rows[2]["params"] not in enqueued
        for row, params in zip(rows, enqueued, strict=False):
            spec = client.get(f"/v1/jobs/{row['job_id']}").json()["spec"]
            assert spec["optimizer"]["lr"] == params[LR]
            assert spec["model"]["layers"][0]["out_channels"] == params[WIDTH]

        # A grid study of two points, then one warm-started from it: the second study's
        # sampler skips the points the first trained, and queues no job for them.
        source = wait_for_study(client, create(client, {"name": "half", **WIDTHS_GRID})["id"])
        assert source["status"] == "succeeded", stack.logs()
        jobs_before = {job["id"] for job in tenant_jobs(client)}
        warm = create(
            client,
            {
                "name": "other-half",
                **WIDTHS_GRID,
                "warm_start": {"study_id": source["id"]},
                "confirm": {"top_k": 1, "seeds": 2},
            },
        )
        assert warm["warm_trials"] == 2
        done = wait_for_study(client, warm["id"])
        assert done["status"] == "succeeded", stack.logs()
        source_rows, warm_rows = trials(client, source["id"]), trials(client, warm["id"])
        search = [t for t in warm_rows if t["confirms"] is None]
        widths = [t["params"][WIDTH] for t in source_rows + search]
        assert sorted(widths) == [4, 8, 12, 16]
        new_jobs = {job["id"] for job in tenant_jobs(client)} - jobs_before
        assert new_jobs == {t["job_id"] for t in warm_rows}
        assert len(new_jobs) == 2 + 2  # its two search trials and two refit runs

        # Refit: the configuration chosen on validation, trained again on every image.
        (confirmed,) = done["confirmed"]
        best = max(search, key=lambda t: (t["value"], -t["number"]))
        assert confirmed["trial"] == best["number"]
        runs = [
            job_with_metrics(client, t["job_id"]) for t in warm_rows if t["confirms"] is not None
        ]
        assert len(runs) == confirmed["n"] == 2
        for run in runs:
            assert run["status"] == "succeeded"
            assert run["spec"]["data"]["validation"] == 0
            assert run["spec"]["data"]["train_subset"] is None
            assert all(m["val_accuracy"] is None for m in run["metrics"])
        finals = [run["metrics"][-1]["test_accuracy"] for run in runs]
        assert confirmed["test_mean"] == pytest.approx(statistics.fmean(finals))
        assert confirmed["test_std"] == pytest.approx(statistics.stdev(finals))
        assert confirmed["test_min_last3"] == min(
            m["test_accuracy"] for run in runs for m in run["metrics"][-3:]
        )
        assert confirmed["parameters"] == runs[0]["analysis"]["parameters"]
    figure(
        f"[studies] enqueue ran {len(enqueued)} configurations first; a warm start of "
        f"{warm['warm_trials']} trials left the grid's other {len(search)} points; refit of "
        f"trial {confirmed['trial']} on every image: test {confirmed['test_mean']:.4f} ± "
        f"{confirmed['test_std']:.4f}, lowest of the last 3 epochs "
        f"{confirmed['test_min_last3']:.4f}"
    )
