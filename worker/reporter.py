"""The trainer's reporter for a claimed attempt: posts epochs, beats the heart, hears cancels."""

import logging
import threading

from shared.messages import (
    CheckpointRecord,
    Claim,
    EpochMetrics,
    EpochReport,
    FinishReport,
    FinishStatus,
    Heartbeat,
    JobError,
    JobResult,
)
from worker.api_client import ApiClient, ApiRefused, ApiUnreachable

log = logging.getLogger(__name__)


class AttemptReporter:
    def __init__(self, client: ApiClient, claim: Claim, heartbeat_seconds: float) -> None:
        self.client = client
        self.claim = claim
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._heartbeat_seconds = heartbeat_seconds
        self._heart = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> "AttemptReporter":
        self._heart.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop_heartbeat.set()
        self._heart.join(timeout=self._heartbeat_seconds + 15)

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    @property
    def attempt(self) -> int:
        return self.claim.attempt

    @property
    def token(self) -> str:
        return self.claim.lease_token

    def _post(
        self,
        route: str,
        body: Heartbeat | EpochReport | FinishReport,
        retry_seconds: float | None = None,
    ) -> None:
        try:
            answer = self.client.attempt_post(self.job_id, route, body, retry_seconds)
        except ApiRefused as refused:
            if refused.status == 409:
                log.warning(
                    "job %s attempt %d lost its lease: %s",
                    self.job_id,
                    self.claim.attempt,
                    refused.body,
                )
                self.lost.set()
                return
            raise
        if answer.cancelled:
            self.cancelled.set()

    def _beat(self) -> None:
        while not self._stop_heartbeat.wait(self._heartbeat_seconds):
            try:
                self._post(
                    "heartbeat",
                    Heartbeat(attempt=self.attempt, lease_token=self.token),
                    retry_seconds=self._heartbeat_seconds,
                )
            except (ApiUnreachable, ApiRefused) as error:
                # A missed beat is not fatal; the next one, or an epoch post, renews the lease.
                log.warning("heartbeat for job %s failed: %s", self.job_id, error)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set()

    def epoch_finished(self, metrics: EpochMetrics, checkpoint: CheckpointRecord | None) -> None:
        self._post(
            "epochs",
            EpochReport(
                attempt=self.attempt, lease_token=self.token, metrics=metrics, checkpoint=checkpoint
            ),
        )

    def finish(
        self, status: FinishStatus, error: JobError | None = None, result: JobResult | None = None
    ) -> None:
        if self.lost.is_set():
            return  # another attempt holds the job now: this one has nothing to say
        self._post(
            "finish",
            FinishReport(attempt=self.attempt, lease_token=self.token, status=status, error=error),
        )
