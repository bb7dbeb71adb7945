"""The trainer's reporter for a claimed attempt: delivers epochs, beats the heart, hears
cancels and shutdowns.

Epoch reports go into an outbox that a sender thread delivers in order, retrying while
the API is unreachable, so training does not wait on the network; each epoch's checkpoint
is uploaded just before its epoch is posted. Heartbeats renew the lease through long epochs
(uploads included), carry the newest progress within the epoch and bring back news of a
cancel.

A checkpoint that cannot be uploaded (refused, unreadable, or the API unreachable for the
whole retry window) never costs the epoch: the epoch is posted without it, and the job
resumes, if it must, from the newest checkpoint that did arrive.
"""

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

from shared.messages import (
    BatchProgress,
    CheckpointRecord,
    Claim,
    EpochMetrics,
    EpochReport,
    FinishReport,
    FinishStatus,
    HandBack,
    Heartbeat,
    JobError,
    JobResult,
)
from shared.protocol import AttemptRoute, ProblemCode, problem_type
from worker import checkpoint_transfer, shutdown
from worker.api_client import ApiClient, ApiRefused, ApiUnreachable

log = logging.getLogger(__name__)

AttemptMessage = Heartbeat | EpochReport | FinishReport | HandBack
# The API's answers to an epoch post whose checkpoint it will not record (not uploaded, or
# not as recorded): the epoch itself is still worth posting.
CHECKPOINT_PROBLEMS = {
    problem_type(ProblemCode.checkpoint_not_stored),
    problem_type(ProblemCode.checkpoint_refused),
}


def _problem_type(body: Any) -> str | None:
    return body.get("type") if isinstance(body, dict) else None


class AttemptReporter:
    def __init__(
        self,
        client: ApiClient,
        claim: Claim,
        heartbeat_seconds: float,
        checkpoint_folder: Path | None = None,
    ) -> None:
        self.client = client
        self.claim = claim
        # Where the trainer writes this job's checkpoints, to be uploaded from; None
        # posts the records as they are.
        self.checkpoint_folder = checkpoint_folder
        self.cancelled = threading.Event()
        # The study's pruner stopped this trial; the API has already ended the job.
        self.pruned = threading.Event()
        self.lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._heartbeat_seconds = heartbeat_seconds
        # Written by the training thread, read by the heartbeat: replacing the reference is
        # atomic and a report is never changed once made, so no lock is needed.
        self._progress: BatchProgress | None = None
        self._heart = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._outbox: queue.Queue[EpochReport | None] = queue.Queue()
        self._sender = threading.Thread(target=self._send, name="epoch-sender", daemon=True)
        # The worker's main process; if it dies, this process is an orphan nobody supervises.
        self._parent = os.getppid()

    def __enter__(self) -> "AttemptReporter":
        self._heart.start()
        self._sender.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._outbox.put(None)
        self._sender.join(timeout=self.client.retry_seconds + 15)
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

    def _lose(self, refused: ApiRefused) -> None:
        log.warning(
            "job %s attempt %d lost its lease: %s", self.job_id, self.claim.attempt, refused.body
        )
        self.lost.set()

    def _post(
        self, route: AttemptRoute, body: AttemptMessage, retry_seconds: float | None = None
    ) -> None:
        try:
            answer = self.client.attempt_post(self.job_id, route, body, retry_seconds)
        except ApiRefused as refused:
            if refused.status == 409:
                self._lose(refused)
                return
            raise
        if answer.cancelled:
            self.cancelled.set()
        if answer.pruned:
            self.pruned.set()

    def _beat(self) -> None:
        while not self._stop_heartbeat.wait(self._heartbeat_seconds):
            if os.getppid() != self._parent:
                log.warning("job %s: the worker's main process is gone; stopping", self.job_id)
                self.lost.set()
                return
            try:
                self._post(
                    AttemptRoute.heartbeat,
                    Heartbeat(
                        attempt=self.attempt, lease_token=self.token, progress=self._progress
                    ),
                    retry_seconds=self._heartbeat_seconds,
                )
            except (ApiUnreachable, ApiRefused) as error:
                # A missed beat is not fatal; the next one, or an epoch post, renews the lease.
                log.warning("heartbeat for job %s failed: %s", self.job_id, error)

    def _send(self) -> None:
        while True:
            report = self._outbox.get()
            try:
                if report is None:
                    return
                if not self.lost.is_set():
                    report = self._upload_checkpoint(report)
                if not self.lost.is_set():  # else another attempt reports its own epochs
                    self._post_epoch(report)
            except (ApiUnreachable, ApiRefused) as error:
                # Unreachable for the whole retry window: the lease has run out by now.
                epoch = report.metrics.epoch if report is not None else None
                log.error("job %s: epoch %s undelivered: %s", self.job_id, epoch, error)
                self.lost.set()
            finally:
                # Counted done whatever happened, so flush() never waits on a report forever.
                self._outbox.task_done()

    def _upload_checkpoint(self, report: EpochReport) -> EpochReport:
        """The report as it is once its checkpoint is in the API's store, or without the
        checkpoint if that cannot be (the epoch is kept either way)."""
        record = report.checkpoint
        if record is None or self.checkpoint_folder is None:
            return report
        try:
            checkpoint_transfer.upload(
                self.client, self.claim, self.checkpoint_folder / record.name, record
            )
            return report
        except ApiRefused as refused:
            if refused.status == 409:
                self._lose(refused)
                return report
            problem = f"refused: {refused}"
        except ApiUnreachable as unreachable:
            problem = str(unreachable)
        except OSError as error:
            problem = f"unreadable: {error}"
        log.error(
            "job %s: checkpoint %s not uploaded (%s); epoch %d is posted without it",
            self.job_id,
            record.name,
            problem,
            report.metrics.epoch,
        )
        return report.model_copy(update={"checkpoint": None})

    def _post_epoch(self, report: EpochReport) -> None:
        try:
            self._post(AttemptRoute.epochs, report)
        except ApiRefused as refused:
            if report.checkpoint is None or _problem_type(refused.body) not in CHECKPOINT_PROBLEMS:
                raise
            log.error(
                "job %s: checkpoint %s not recorded (%s); epoch %d is posted without it",
                self.job_id,
                report.checkpoint.name,
                refused,
                report.metrics.epoch,
            )
            self._post(AttemptRoute.epochs, report.model_copy(update={"checkpoint": None}))

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.pruned.is_set() or self.lost.is_set()

    def stop_reason(self) -> str:
        if self.cancelled.is_set():
            return "cancelled"
        if self.pruned.is_set():
            return "pruned by its study"
        return "lease lost"

    def handback_deadline(self) -> float | None:
        return shutdown.handback_deadline()

    def epoch_finished(self, metrics: EpochMetrics, checkpoint: CheckpointRecord | None) -> None:
        self._outbox.put(
            EpochReport(
                attempt=self.attempt, lease_token=self.token, metrics=metrics, checkpoint=checkpoint
            )
        )

    def batch_progress(self, progress: BatchProgress) -> None:
        # Only the newest counts: the next heartbeat carries it, earlier ones are dropped.
        self._progress = progress

    def flush(self) -> None:
        """Waits until every epoch reported so far was delivered (or given up on)."""
        if self._sender.is_alive():
            self._outbox.join()

    def finish(
        self, status: FinishStatus, error: JobError | None = None, result: JobResult | None = None
    ) -> None:
        self.flush()
        if self.lost.is_set():
            return  # another attempt holds the job now: this one has nothing to say
        self._post(
            AttemptRoute.finish,
            FinishReport(
                attempt=self.attempt,
                lease_token=self.token,
                status=status,
                error=error,
                result=result,
            ),
        )

    def hand_back(self, retry_seconds: float) -> None:
        """Gives the job back after its last delivered epoch, for another attempt to resume."""
        self.flush()
        if self.lost.is_set():
            return
        self._post(
            AttemptRoute.release,
            HandBack(attempt=self.attempt, lease_token=self.token),
            retry_seconds,
        )
