"""A checkpoint as a worker uploads it: the attempt is checked before a byte of the body is
read; the body is then streamed to the store's staging folder while it is counted and hashed
(never held in memory whole), and kept only if it matches the SHA-256 it was sent with."""

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.artifacts.store import ArtifactStore, StoredMeta
from api.core.deps import SessionDep
from api.jobs.ledger import require_running_attempt
from api.web.error_handlers import json_path
from api.web.errors import BodyIncomplete, BodyTooLarge, ChecksumMismatch
from shared.messages import MAX_INT32, AttemptPost
from shared.protocol import ATTEMPT_HEADER, CHECKPOINT_SHA256_HEADER, LEASE_TOKEN_HEADER

# The header a mismatch names, as a 422 names a missing or malformed one.
SHA256_FIELD = json_path(("header", CHECKPOINT_SHA256_HEADER))
# Received bytes go to disk in pieces this large, not one write per network read.
WRITE_BYTES = 1024 * 1024
# How a body being received is named in the staging folder.
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".upload-", ".partial"
# A body being received is written to at least every WRITE_BYTES; one left untouched this
# long was abandoned by an API process that died receiving it.
ABANDONED_AFTER_SECONDS = 3600.0

log = logging.getLogger(__name__)


def uploading_attempt(
    job_id: str,
    session: SessionDep,
    attempt: Annotated[
        int, Header(alias=ATTEMPT_HEADER, ge=1, le=MAX_INT32, description="The attempt uploading")
    ],
    lease_token: Annotated[
        str, Header(alias=LEASE_TOKEN_HEADER, max_length=100, description="Its lease token")
    ],
) -> AttemptPost:
    """The uploading attempt, if it holds the job and the job still runs (409 otherwise,
    before the body is read): a cancelled or pruned job's attempt has nothing to upload."""
    post = AttemptPost(attempt=attempt, lease_token=lease_token)
    # Ends its read: no transaction stays open while the body streams in.
    require_running_attempt(session, job_id, post)
    return post


UploaderDep = Annotated[AttemptPost, Depends(uploading_attempt)]


@dataclass
class Received:
    """An upload on the API's disk, counted and hashed, not yet in the store."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _too_large(limit: int) -> BodyTooLarge:
    # The rest of the body is never read, so the connection cannot be reused.
    return BodyTooLarge(
        f"a checkpoint must be at most {limit} bytes (max_checkpoint_bytes)",
        headers={"Connection": "close"},
    )


async def receive(request: Request, staging: Path, declared: int, limit: int) -> Received:
    """Streams the body to a file in `staging`: 413 past `limit` bytes, whatever its
    Content-Length (`declared`) says; 400 if it ends short of, or runs past, `declared`."""
    if declared > limit:
        raise _too_large(limit)
    # Not deleted on close: on success the store takes the file over.
    handle = tempfile.NamedTemporaryFile(
        dir=staging, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, delete=False
    )
    path = Path(handle.name)
    digest = hashlib.sha256()
    size = 0
    pending = bytearray()
    try:
        with handle:
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    if size > declared:
                        raise BodyIncomplete(f"the body runs past its Content-Length, {declared}")
                    digest.update(chunk)
                    pending += chunk
                    if len(pending) >= WRITE_BYTES:
                        await run_in_threadpool(handle.write, bytes(pending))
                        pending.clear()
            except ClientDisconnect:
                raise BodyIncomplete(
                    f"the upload was cut off after {size} of {declared} bytes"
                ) from None
            if size < declared:
                raise BodyIncomplete(f"the body ended after {size} of {declared} bytes")
            await run_in_threadpool(_write_durably, handle, bytes(pending))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Received(path, digest.hexdigest(), size)


def remove_abandoned_uploads(staging: Path) -> int:
    """Deletes the partial bodies in `staging` untouched for ABANDONED_AFTER_SECONDS: what
    a killed API process was receiving (a failed upload removes its own). Other processes'
    uploads under way are fresh, and the folder's other files are not ours."""
    cutoff = time.time() - ABANDONED_AFTER_SECONDS
    removed = 0
    for path in staging.glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # another API process, starting too, removed it first
    if removed:
        log.info("removed %d abandoned checkpoint uploads from %s", removed, staging)
    return removed


def _write_durably(handle: IO[bytes], rest: bytes) -> None:
    handle.write(rest)
    handle.flush()
    # On disk before it is renamed into the store: a crash never leaves half a checkpoint
    # under a name its record vouches for.
    os.fsync(handle.fileno())


def check_sha256(received: Received, sha256: str) -> None:
    if received.sha256 != sha256:
        raise ChecksumMismatch(
            f"the {received.size} bytes received hash to {received.sha256}",
            errors=[
                {
                    "field": SHA256_FIELD,
                    "message": f"does not match the body, whose SHA-256 is {received.sha256}",
                    "type": "sha256_mismatch",
                }
            ],
        )


def keep(
    store: ArtifactStore,
    engine: Engine,
    job_id: str,
    post: AttemptPost,
    name: str,
    received: Received,
) -> bool:
    """Puts a checked upload into the store; False if the store already held exactly these
    bytes under that name (a repeated upload), which are then left as they are."""
    if store.head(job_id, name) == StoredMeta(received.sha256, received.size):
        return False
    # Asked again after the body arrived, however long that took: an attempt that lost the
    # job meanwhile never replaces a file the attempt holding it now may have recorded.
    with Session(engine) as session:
        require_running_attempt(session, job_id, post)
    store.put(job_id, name, received.path, received.sha256)
    return True
