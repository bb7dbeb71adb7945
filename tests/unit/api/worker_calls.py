"""Drives the internal worker routes the way a worker does, for route tests, and says when
the lease of a worker gone silent has run out."""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from api.core.models import utcnow
from shared.settings import Settings

# Where a worker is within an epoch, as its heartbeat tells it.
PROGRESS = {
    "phase": "train",
    "epoch": 0,
    "batches_completed": 3,
    "batches": 8,
    "images_per_second": 640.0,
    "eta_seconds": 12.0,
}


def epoch_metrics(epoch: int, test_accuracy: float = 0.9, **overrides: Any) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": 0.5,
        "train_accuracy": 0.8,
        "test_loss": 0.4,
        "test_accuracy": test_accuracy,
        "lr": 0.05,
        "batch_size": 128,
        "epoch_seconds": 1.5,
        "images_per_second": 1000.0,
        **overrides,
    }


def checkpoint_record(
    job_id: str, epoch: int, sha256: str = "0" * 64, size: int = 10
) -> dict[str, Any]:
    name = f"epoch-{epoch:03d}.pt"
    return {
        "name": name,
        "path": f"{job_id}/{name}",
        "epoch": epoch,
        "test_accuracy": 0.9,
        "sha256": sha256,
        "bytes": size,
    }


@dataclass
class WorkerCalls:
    client: TestClient
    headers: dict[str, str]

    def claim(self, job_id: str, worker: str = "node-1") -> Any:
        return self.client.post(
            f"/internal/v1/jobs/{job_id}/claim", json={"worker": worker}, headers=self.headers
        )

    def attempt(self, job_id: str, worker: str = "node-1") -> dict[str, Any]:
        response = self.claim(job_id, worker)
        assert response.status_code == 200, response.text
        claim = response.json()
        return {"attempt": claim["attempt"], "lease_token": claim["lease_token"]}

    def post_epoch(
        self,
        job_id: str,
        attempt: dict[str, Any],
        epoch: int,
        checkpoint: dict[str, Any] | None = None,
        **metrics: Any,
    ) -> Any:
        body = {**attempt, "metrics": epoch_metrics(epoch, **metrics), "checkpoint": checkpoint}
        return self.client.post(
            f"/internal/v1/jobs/{job_id}/epochs", json=body, headers=self.headers
        )

    def upload(
        self,
        job_id: str,
        attempt: dict[str, Any],
        name: str,
        payload: bytes,
        **headers: str,
    ) -> Any:
        """PUTs a checkpoint file; `headers` (X_Checkpoint_SHA256="...") override the
        honest ones, underscores standing for dashes."""
        sent = {
            "X-Attempt": str(attempt["attempt"]),
            "X-Lease-Token": attempt["lease_token"],
            "X-Checkpoint-SHA256": hashlib.sha256(payload).hexdigest(),
            **{name.replace("_", "-"): value for name, value in headers.items()},
        }
        return self.client.put(
            f"/internal/v1/jobs/{job_id}/checkpoints/{name}",
            content=payload,
            headers={**self.headers, **sent},
        )

    def uploaded_checkpoint(
        self, job_id: str, attempt: dict[str, Any], epoch: int, payload: bytes | None = None
    ) -> dict[str, Any]:
        """Uploads a checkpoint of `epoch` and returns the record its epoch post carries."""
        payload = payload if payload is not None else f"weights {job_id} {epoch}".encode()
        response = self.upload(job_id, attempt, f"epoch-{epoch:03d}.pt", payload)
        assert response.status_code in (200, 201), response.text
        return checkpoint_record(job_id, epoch, hashlib.sha256(payload).hexdigest(), len(payload))

    def download(self, job_id: str, name: str) -> Any:
        return self.client.get(
            f"/internal/v1/jobs/{job_id}/checkpoints/{name}", headers=self.headers
        )

    def heartbeat(
        self, job_id: str, attempt: dict[str, Any], progress: dict[str, Any] | None = None
    ) -> Any:
        body = attempt if progress is None else {**attempt, "progress": progress}
        return self.client.post(
            f"/internal/v1/jobs/{job_id}/heartbeat", json=body, headers=self.headers
        )

    def release(self, job_id: str, attempt: dict[str, Any]) -> Any:
        return self.client.post(
            f"/internal/v1/jobs/{job_id}/release", json=attempt, headers=self.headers
        )

    def finish(
        self,
        job_id: str,
        attempt: dict[str, Any],
        status: str = "succeeded",
        error: dict[str, str] | None = None,
    ) -> Any:
        return self.client.post(
            f"/internal/v1/jobs/{job_id}/finish",
            json={**attempt, "status": status, "error": error},
            headers=self.headers,
        )


def after_the_lease(settings: Settings) -> datetime:
    """A moment past the lease of an attempt claimed now: the sweeper may take its job back."""
    return utcnow() + timedelta(seconds=settings.lease_seconds + 1)
