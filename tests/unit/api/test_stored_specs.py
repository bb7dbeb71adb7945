"""A stored job trains what it was submitted with, whatever happens to the presets after."""

from pathlib import Path

import torch
from fastapi.testclient import TestClient
from torch import nn

from shared.messages import Claim
from shared.presets import PRESETS, Preset
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.api.worker_calls import WorkerCalls
from tests.unit.worker.reporters import RecordingReporter
from tests.unit.worker.small_jobs import CPU_FP32
from worker.training.data import load_mnist
from worker.training.loop import train
from worker.training.model import build_for_training

QUICK = {"epochs": 1, "batch_size": 64, "data": {"train_subset": 256, "test_subset": 64}}


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def doubled(preset: Preset) -> Preset:
    """The preset with every hidden width doubled."""
    layers = tuple(
        {**layer, "out_channels": 2 * layer["out_channels"]}  # type: ignore[operator]
        if layer.get("out_channels", 10) != 10
        else layer
        for layer in preset.raw_layers
    )
    return Preset(preset.name, preset.description, layers, preset.recipe)


def test_a_job_queued_before_its_preset_changed_is_claimed_and_trained_as_stored(
    client: TestClient, auth, worker_auth, monkeypatch, tmp_path: Path
):
    body = {**QUICK, "model": {"preset": "compact-8k"}}
    submitted = client.post("/v1/jobs", json=body, headers=auth)
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    stored = [
        layer["out_channels"] for layer in job["spec"]["model"]["layers"] if "out_channels" in layer
    ]

    monkeypatch.setitem(PRESETS, "compact-8k", doubled(PRESETS["compact-8k"]))

    answer = WorkerCalls(client, worker_auth).claim(job["id"])
    assert answer.status_code == 200, answer.text
    claim = Claim.model_validate(answer.json())
    assert claim.spec.model.preset == "compact-8k"
    assert conv_widths(build_for_training(claim.spec, CPU_FP32.device)) == stored

    write_synthetic_mnist(tmp_path / "data", train=256, test=64)
    torch.manual_seed(0)
    reporter = RecordingReporter()
    result = train(claim.spec, load_mnist(tmp_path / "data"), reporter, hardware=CPU_FP32)
    assert result.epochs_completed == 1
    assert [row.epoch for row in reporter.rows] == [0]
