"""The worker protocol's words, written once for both sides: the internal routes' paths, the
headers a checkpoint travels with, and the problem types a worker acts on. The API serves
these paths and raises these types; the worker calls and recognises them."""

from enum import StrEnum

# Every worker route lives under this prefix, one job at a time.
JOBS_PREFIX = "/internal/v1/jobs"


class AttemptRoute(StrEnum):
    """The posts an attempt makes about its job, each answered with an AttemptAnswer."""

    epochs = "epochs"
    heartbeat = "heartbeat"
    finish = "finish"
    release = "release"


CLAIM = "claim"


def claim_path(job_id: str) -> str:
    return f"{JOBS_PREFIX}/{job_id}/{CLAIM}"


def attempt_path(job_id: str, route: AttemptRoute) -> str:
    return f"{JOBS_PREFIX}/{job_id}/{route.value}"


def checkpoint_path(job_id: str, name: str) -> str:
    """Where a worker uploads a checkpoint file (PUT) and downloads one to resume from (GET)."""
    return f"{JOBS_PREFIX}/{job_id}/checkpoints/{name}"


# A checkpoint upload's body is the file; the rest travels in these headers (with its
# Content-Length), and a download answers with the file's SHA-256 in the last.
ATTEMPT_HEADER = "X-Attempt"
LEASE_TOKEN_HEADER = "X-Lease-Token"
CHECKPOINT_SHA256_HEADER = "X-Checkpoint-SHA256"

# A problem+json answer's `type` is this prefix and the problem's code.
PROBLEM_TYPE_PREFIX = "urn:tunelab:problem:"


def problem_type(code: str) -> str:
    return PROBLEM_TYPE_PREFIX + code


class ProblemCode(StrEnum):
    """The problems a worker tells apart from the rest."""

    # The epoch post's checkpoint was never uploaded, or not with the bytes recorded.
    checkpoint_not_stored = "checkpoint-not-stored"
    # The epoch post's checkpoint names a path outside the job's own.
    checkpoint_refused = "checkpoint-refused"
