"""Studies v2 played through the routes: a study body, a worker that reports made-up
validation and test curves, and running a study to its end."""

import math
from typing import Any

from fastapi.testclient import TestClient

from tests.unit.api.tenant_calls import error_fields
from tests.unit.api.worker_calls import WorkerCalls

QUICK_BASE = {"epochs": 3, "data": {"train_subset": 256, "test_subset": 64}}
ENDED = ("succeeded", "failed", "cancelled")
TWO_OBJECTIVES = [
    {"metric": "val_accuracy", "direction": "maximize"},
    {"metric": "parameters", "direction": "minimize"},
]
GOOD_LR, HOPELESS_LR = 0.05, 0.00002


def study_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "v2",
        "base": QUICK_BASE,
        "space": {
            "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 16, "step": 4},
        },
        "sampler": {"name": "random", "seed": 1},
        "max_trials": 4,
    }
    return {**body, **fields}


def validation_curve(lr: float, width: int, epoch: int, epochs: int) -> float:
    """A made-up learning curve: best near lr 0.05, a little better for wider layers."""
    distance = math.log10(lr) - math.log10(0.05)
    quality = math.exp(-(distance**2)) * (0.9 + width / 160)
    return round(min(0.99, 0.1 + 0.85 * quality * (epoch + 1) / epochs), 6)


class Workers:
    """Plays the worker: validation by `validation_curve`, test a little off it, so that the
    epoch of best validation and of best test differ; `validate=False` reports none."""

    def __init__(self, client: TestClient, worker_auth: dict, dispatcher) -> None:
        self.calls = WorkerCalls(client, worker_auth)
        self.dispatcher = dispatcher
        self.done: set[str] = set()
        self.validate = True

    def train(self) -> None:
        for job_id in [j for j in self.dispatcher.sent if j not in self.done]:
            self.done.add(job_id)
            claim = self.calls.claim(job_id).json()
            spec = claim["spec"]
            attempt = {"attempt": claim["attempt"], "lease_token": claim["lease_token"]}
            lr, width = spec["optimizer"]["lr"], spec["model"]["layers"][0]["out_channels"]
            for epoch in range(spec["epochs"]):
                val = validation_curve(lr, width, epoch, spec["epochs"])
                # Test peaks at the first epoch and falls: never the epoch validation picks.
                test = round(0.5 + 0.1 * (spec["epochs"] - epoch), 6)
                metrics = {"test_accuracy": test}
                if self.validate and spec["data"]["validation"]:
                    metrics |= {"val_accuracy": val, "val_loss": 1 - val}
                answer = self.calls.post_epoch(job_id, attempt, epoch, **metrics).json()
                if answer["pruned"] or answer["cancelled"]:
                    break
            else:
                assert self.calls.finish(job_id, attempt).status_code == 200


def run_study(client, auth, scheduler, workers, body) -> dict[str, Any]:
    created = client.post("/v1/studies", json=body, headers=auth)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    for _ in range(60):
        scheduler.run_once()
        workers.train()
        study = client.get(f"/v1/studies/{study_id}", headers=auth).json()
        if study["status"] in ENDED:
            return study
    raise AssertionError(f"study did not end: {study}")


def trials_of(client, auth, study_id: str, order: str = "number") -> list[dict[str, Any]]:
    response = client.get(f"/v1/studies/{study_id}/trials", params={"order": order}, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def problems(response) -> dict[str, str]:
    fields = error_fields(response)
    return dict(zip(fields, (e["message"] for e in response.json()["errors"]), strict=True))
