"""A job's checkpoint fetched to a file: the one asked for, streamed to a temporary file
beside the target while it is hashed, kept only when its SHA-256 matches both the one the
download was answered with (`X-Checkpoint-SHA256`) and the one the listing recorded, then
renamed into place, so the target is never half a file or someone else's bytes."""

import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cli.client.http_client import ApiClient, job_path
from cli.errors import CommandFailed

CHUNK_BYTES = 1 << 20
SHA256_HEADER = "X-Checkpoint-SHA256"


class ChecksumMismatch(CommandFailed):
    """The bytes downloaded are not the checkpoint the API recorded."""


def listing(client: ApiClient, job_id: str) -> list[dict[str, Any]]:
    return list(client.get(job_path(job_id, "checkpoints"))["items"])


def pick(
    job_id: str,
    checkpoints: Sequence[Mapping[str, Any]],
    *,
    epoch: int | None = None,
    best: bool = False,
    name: str | None = None,
) -> Mapping[str, Any]:
    """The checkpoint named, or of that epoch, or the best (the first epoch to reach the
    highest validation accuracy when the job validated, else test accuracy), or else the
    newest."""
    if not checkpoints:
        raise CommandFailed(f"job {job_id} has no checkpoints yet")
    if name is not None:
        found = [c for c in checkpoints if c["name"] == name]
        if not found:
            names = ", ".join(c["name"] for c in checkpoints)
            raise CommandFailed(f"job {job_id} has no checkpoint {name!r} (it has {names})")
        return found[0]
    if epoch is not None:
        found = [c for c in checkpoints if c["epoch"] == epoch]
        if not found:
            epochs = ", ".join(str(c["epoch"]) for c in checkpoints)
            raise CommandFailed(
                f"job {job_id} has no checkpoint of epoch {epoch} (it has epochs {epochs})"
            )
        return found[0]
    if best:
        # A job that held images out chose by them: its test set never picks the model.
        validated = any(c.get("val_accuracy") is not None for c in checkpoints)
        metric = "val_accuracy" if validated else "test_accuracy"
        scored = [c for c in checkpoints if c.get(metric) is not None]
        if not scored:
            raise CommandFailed(f"job {job_id}'s checkpoints have no test accuracy to rank")
        return min(scored, key=lambda c: (-c[metric], c["epoch"]))
    return max(checkpoints, key=lambda c: c["epoch"])


def download_path(job_id: str, checkpoint: Mapping[str, Any]) -> str:
    """Where to GET it: the listing's `url` when it is a path on the API (never another host,
    which would be sent the key), else the route of its name."""
    url = checkpoint.get("url")
    if isinstance(url, str) and url.startswith("/") and not url.startswith("//"):
        return url
    return job_path(job_id, "checkpoints", quote(checkpoint["name"], safe=""))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(client: ApiClient, job_id: str, checkpoint: Mapping[str, Any], target: Path) -> Path:
    """Streams the checkpoint to `target` (replacing it) once its SHA-256 checks out."""
    expected = str(checkpoint["sha256"]).lower()
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own, created exclusively, with the permissions of any new file (a
    # mkstemp file would be private, and stay so after the rename).
    partial = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
    try:
        digest = hashlib.sha256()
        size = 0
        with partial.open("xb") as file:
            with client.streamed(download_path(job_id, checkpoint)) as response:
                announced = response.headers.get(SHA256_HEADER, "").lower()
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    digest.update(chunk)
                    file.write(chunk)
                    size += len(chunk)
            file.flush()
            os.fsync(file.fileno())
        got = digest.hexdigest()
        name = checkpoint["name"]
        if announced and announced != expected:
            raise ChecksumMismatch(
                f"checkpoint {name} of job {job_id}: the download says SHA-256 {announced}, "
                f"the listing {expected}"
            )
        if got != expected:
            raise ChecksumMismatch(
                f"checkpoint {name} of job {job_id} does not match its SHA-256: expected "
                f"{expected}, got {got} ({size:,} bytes)"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def cached(client: ApiClient, job_id: str, checkpoint: Mapping[str, Any], folder: Path) -> Path:
    """The checkpoint under `folder/JOB/NAME`, downloaded only when no intact copy is there
    (a copy is re-hashed, so a changed or planted file is fetched again, never trusted)."""
    target = folder / quote(job_id, safe="") / checkpoint["name"]
    if target.is_file() and sha256_of(target) == str(checkpoint["sha256"]).lower():
        return target
    # Private: a checkpoint is the tenant's, even in a shared temporary folder.
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target.parent.mkdir(exist_ok=True, mode=0o700)
    return download(client, job_id, checkpoint, target)
