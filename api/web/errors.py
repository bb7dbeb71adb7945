"""One error tree: each domain error carries its status, and api.web.error_handlers turns any of
them into a problem+json answer."""

from typing import Any

from shared.protocol import ProblemCode


class TunelabError(Exception):
    status: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self, detail: str, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        # Extra members of the problem body, for a client to act on without parsing `detail`.
        self.extensions = extensions


class Unauthorized(TunelabError):
    status, code, title = 401, "unauthorized", "Missing or invalid credentials"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class JobNotFound(TunelabError):
    status, code, title = 404, "job-not-found", "Job not found"


class StudyNotFound(TunelabError):
    status, code, title = 404, "study-not-found", "Study not found"


class StudyNotCancellable(TunelabError):
    status, code, title = 409, "study-not-cancellable", "Study cannot be cancelled"


class CheckpointNotFound(TunelabError):
    status, code, title = 404, "checkpoint-not-found", "Checkpoint not found"


class JobNotCancellable(TunelabError):
    status, code, title = 409, "job-not-cancellable", "Job cannot be cancelled"


class JobNotDeletable(TunelabError):
    status, code, title = 409, "job-not-deletable", "Job cannot be deleted"


class JobNotClaimable(TunelabError):
    status, code, title = 409, "job-not-claimable", "Job cannot be claimed"


class StaleAttempt(TunelabError):
    status, code, title = 409, "stale-attempt", "This attempt no longer holds the job"


class CheckpointRefused(TunelabError):
    status, code, title = 422, ProblemCode.checkpoint_refused, "Checkpoint path refused"


class IdempotencyConflict(TunelabError):
    status, code, title = 409, "idempotency-conflict", "Idempotency-Key reused with another body"


class BodyTooLarge(TunelabError):
    status, code, title = 413, "body-too-large", "Request body too large"


class RateLimited(TunelabError):
    status, code, title = 429, "rate-limited", "Too many requests"


class TooManyJobs(TunelabError):
    status, code, title = 429, "too-many-jobs", "Too many queued and running jobs"


class TooManyStudies(TunelabError):
    status, code, title = 429, "too-many-studies", "Too many queued and running studies"


class TooManyStreams(TunelabError):
    status, code, title = 429, "too-many-streams", "Too many open event streams"


class BodyIncomplete(TunelabError):
    status, code, title = 400, "body-incomplete", "Request body does not match its Content-Length"


class ChecksumMismatch(TunelabError):
    status, code, title = 422, "checksum-mismatch", "The body does not match its SHA-256"


class CheckpointNotStored(TunelabError):
    status, code, title = 422, ProblemCode.checkpoint_not_stored, "Checkpoint file not in the store"


class StoreUnavailable(TunelabError):
    status, code, title = 503, "store-unavailable", "Checkpoint store unavailable"
