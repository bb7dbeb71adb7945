"""Job resources, metrics rows and checkpoints shaped as API v1 answers them, for the job
commands' tests."""

import hashlib
from typing import Any

from shared.spec import JobSpec


def spec_json(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "baseline-2",
        "model": {
            "layers": [
                {"type": "conv", "out_channels": 8},
                {"type": "maxpool"},
                {"type": "gap"},
                {"type": "linear", "out_features": 10},
            ]
        },
        "optimizer": {"name": "sgd", "lr": 0.05},
        "epochs": 2,
        **fields,
    }
    return JobSpec.model_validate(body).model_dump(mode="json")


def row_json(epoch: int, **fields: Any) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": 0.5 / (epoch + 1),
        "train_accuracy": 0.8 + epoch / 100,
        "test_loss": 0.4 / (epoch + 1),
        "test_accuracy": 0.85 + epoch / 100,
        "lr": 0.05 / (epoch + 1),
        "batch_size": 128,
        "epoch_seconds": 12.34,
        "images_per_second": 4861.2,
        **fields,
    }


def checkpoint_json(job_id: str, epoch: int, **fields: Any) -> dict[str, Any]:
    name = f"epoch-{epoch:03d}.pt"
    return {
        "name": name,
        "path": f"{job_id}/{name}",
        "epoch": epoch,
        "test_accuracy": 0.85 + epoch / 100,
        "sha256": hashlib.sha256(name.encode()).hexdigest(),
        "bytes": 41234,
        "created_at": "2026-12-01T10:00:30Z",
        "url": f"/v1/jobs/{job_id}/checkpoints/{name}",
        **fields,
    }


def job_json(job_id: str = "job_1", **fields: Any) -> dict[str, Any]:
    spec = fields.pop("spec", None) or spec_json()
    return {
        "id": job_id,
        "name": spec.get("name"),
        "status": "succeeded",
        "tags": spec.get("tags", []),
        "spec": spec,
        "created_at": "2026-12-01T10:00:00Z",
        "started_at": "2026-12-01T10:00:02Z",
        "finished_at": "2026-12-01T10:00:27Z",
        "attempts": 1,
        "attempt_history": [],
        "worker": "gpu-node-3",
        "progress": {
            "epochs_completed": 2,
            "epochs": 2,
            "batches_completed": None,
            "batches": None,
            "images_per_second": None,
            "eta_seconds": None,
        },
        "analysis": {"parameters": 7912, "receptive_field": 28, "multiply_adds": 1234567},
        "latest_metrics": row_json(1),
        "best": {"epoch": 1, "test_accuracy": 0.86},
        "checkpoints": [checkpoint_json(job_id, 0), checkpoint_json(job_id, 1)],
        "error": None,
        "result": None,
        "study_id": None,
        "trial": None,
        "pruned_reason": None,
        **fields,
    }
