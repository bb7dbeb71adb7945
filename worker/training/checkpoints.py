"""Checkpoint files: written atomically with their SHA-256, read back only when safe.

A checkpoint is loaded only when its bytes match the SHA-256 the API recorded for it,
and only with `weights_only=True`, so a planted or tampered file can neither run code
in the worker nor feed it someone else's weights.
"""

import hashlib
import io
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.messages import CheckpointRecord

log = logging.getLogger(__name__)


class CheckpointUnusable(Exception):
    """Missing, truncated, tampered with, or not a plain tensor checkpoint."""


# Brings a recorded checkpoint to the given path (from wherever the records are kept), or
# raises CheckpointUnusable.
Fetch = Callable[[CheckpointRecord, Path], None]


def load_checkpoint(path: Path, sha256: str) -> dict[str, Any]:
    """The checkpoint's state, if its bytes hash to `sha256` and hold only tensors and
    plain containers."""
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise CheckpointUnusable(f"{path.name} cannot be read: {error.strerror}") from error
    # Hashed and loaded from the same bytes, so the file cannot change in between.
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise CheckpointUnusable(f"{path.name} does not match its recorded SHA-256")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointUnusable(f"{path.name} is not a loadable checkpoint: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointUnusable(f"{path.name} holds {type(state).__name__}, not a state dict")
    return state


@dataclass
class Checkpointing:
    """Where a job's checkpoints live: artifact_root / job_id / epoch-NNN.pt."""

    artifact_root: Path
    job_id: str

    @property
    def folder(self) -> Path:
        return self.artifact_root / self.job_id

    def discard(self) -> None:
        """Removes the job's folder and every checkpoint in it."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def write(
        self,
        epoch: int,
        state: dict[str, Any],
        test_accuracy: float,
        val_accuracy: float | None = None,
    ) -> CheckpointRecord:
        name = f"epoch-{epoch:03d}.pt"
        relative = f"{self.job_id}/{name}"
        final_path = self.artifact_root / relative
        final_path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        # Written under a temporary name and renamed, so a reader never sees half a file.
        partial = final_path.with_name(f".{name}.{os.getpid()}.partial")
        with open(partial, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, final_path)
        return CheckpointRecord(
            name=name,
            path=relative,
            epoch=epoch,
            test_accuracy=test_accuracy,
            val_accuracy=val_accuracy,
            sha256=hashlib.sha256(payload).hexdigest(),
            bytes=len(payload),
        )

    def path_of(self, record: CheckpointRecord) -> Path | None:
        """The record's file under this job's folder, or None if the path leads elsewhere."""
        root = (self.artifact_root / self.job_id).resolve()
        path = (self.artifact_root / record.path).resolve()
        return path if path.parent == root else None

    def newest_usable(
        self, records: Iterable[CheckpointRecord], fetch: Fetch | None = None
    ) -> tuple[CheckpointRecord, dict[str, Any]] | None:
        """The newest checkpoint that loads intact; corrupt or missing ones are skipped. One
        that is not in the folder intact is fetched there first, given a `fetch`."""
        for record in sorted(records, key=lambda record: record.epoch, reverse=True):
            path = self.path_of(record)
            if path is None:
                log.warning("job %s: checkpoint %s is outside its folder", self.job_id, record.name)
                continue
            try:
                return record, self._load(record, path, fetch)
            except CheckpointUnusable as problem:
                log.warning("job %s: skipping checkpoint: %s", self.job_id, problem)
        return None

    def _load(self, record: CheckpointRecord, path: Path, fetch: Fetch | None) -> dict[str, Any]:
        try:
            return load_checkpoint(path, record.sha256)
        except CheckpointUnusable:
            if fetch is None:
                raise
        fetch(record, path)
        return load_checkpoint(path, record.sha256)
