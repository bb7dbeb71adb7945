"""Checkpoints between the worker's own folder and the API's store, over the internal routes.

The worker shares no disk with the API: each checkpoint it writes is uploaded before the
epoch that names it is posted, and the one an attempt resumes from is downloaded into its
folder and checked against the SHA-256 the API recorded before it is loaded.
"""

import logging
from pathlib import Path

from shared.messages import CheckpointRecord, Claim
from shared.protocol import (
    ATTEMPT_HEADER,
    CHECKPOINT_SHA256_HEADER,
    LEASE_TOKEN_HEADER,
    checkpoint_path,
)
from worker.api_client import ApiClient, ApiRefused
from worker.training.checkpoints import CheckpointUnusable

log = logging.getLogger(__name__)


def upload(client: ApiClient, claim: Claim, file: Path, record: CheckpointRecord) -> None:
    """Puts `file` into the API's store as the job's `record.name`; raises ApiRefused (409:
    the attempt no longer holds the job) or ApiUnreachable, or OSError if it cannot be read."""
    client.put_file(
        checkpoint_path(claim.job_id, record.name),
        file,
        {
            ATTEMPT_HEADER: str(claim.attempt),
            LEASE_TOKEN_HEADER: claim.lease_token,
            CHECKPOINT_SHA256_HEADER: record.sha256,
        },
    )


class Downloader:
    """Fetches a recorded checkpoint into the worker's folder, for Checkpointing.newest_usable
    to load: a refusal (the API has no such file) or a file that does not hash to its record
    makes the checkpoint unusable, and the next older one is tried. ApiUnreachable is left to
    the caller: with the API gone, no checkpoint can be fetched and no epoch posted."""

    def __init__(self, client: ApiClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    def __call__(self, record: CheckpointRecord, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            sha256 = self.client.get_file(checkpoint_path(self.job_id, record.name), target)
        except ApiRefused as refused:
            raise CheckpointUnusable(
                f"{record.name} could not be downloaded: {refused.status} {refused.body}"
            ) from refused
        if sha256 != record.sha256:
            target.unlink(missing_ok=True)
            raise CheckpointUnusable(f"{record.name} as downloaded does not match its SHA-256")
        log.info("job %s: downloaded %s to resume from", self.job_id, record.name)
