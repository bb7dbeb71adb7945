"""The Celery task: claim, train, report. All the training lives in worker.training."""

import logging
import os
import socket
from pathlib import Path

from shared.broker import TRAIN_TASK
from shared.messages import Claim, FinishStatus, JobError, JobResult
from shared.settings import Settings, get_settings
from worker.api_client import ApiClient, ApiRefused, ApiUnreachable
from worker.celery_app import app
from worker.checkpoint_transfer import Downloader
from worker.reporter import AttemptReporter
from worker.runtime import mnist_on_device
from worker.shutdown import handing_back_on_sigterm
from worker.training.checkpoints import Checkpointing
from worker.training.device import detect_hardware
from worker.training.loop import TrainingDiverged, TrainingHandedBack, TrainingStopped, train
from worker.training.lr_range import lr_range_test

log = logging.getLogger(__name__)


def worker_name() -> str:
    return get_settings().worker_name or f"{socket.gethostname()}-{os.getpid()}"


def describe_failure(error: BaseException) -> JobError:
    """Words a user can act on, never a traceback."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, MemoryError) or "out of memory" in text.lower():
        return JobError(
            type="out_of_memory",
            message=f"training ran out of memory ({text}); lower batch_size or "
            "the model's channels",
        )
    if isinstance(error, TrainingDiverged):
        return JobError(
            type="diverged", message=f"training diverged ({text}); lower the learning rate"
        )
    return JobError(type=type(error).__name__, message=text[:500])


@app.task(name=TRAIN_TASK)
def train_job(job_id: str) -> None:
    settings = get_settings()
    with handing_back_on_sigterm(settings.handback_grace_seconds):
        run_attempt(job_id, settings)


def run_attempt(job_id: str, settings: Settings) -> None:
    """Claims the job, trains it or resumes it, and reports how the attempt ended.

    An API that is unreachable, or refuses the attempt's last report, is logged here and
    never escapes the task: the ledger, not this process, decides what becomes of the job.
    """
    client = ApiClient(str(settings.api_url).rstrip("/"), settings.worker_token)
    try:
        try:
            claim = client.claim(job_id, worker_name())
        except ApiRefused as refused:
            # Cancelled, finished, or held by a live attempt: a duplicate delivery is harmless.
            log.info("job %s not claimed: %s", job_id, refused.body)
            return
        except ApiUnreachable as unreachable:
            # Nothing was claimed, so the job is still queued in the ledger and the API's
            # dispatch sweep sends it again. (Had the claim arrived and only its answer been
            # lost, the lease it granted runs out and the sweep queues the job again.)
            log.error(
                "job %s not claimed, the API is unreachable (%s); it stays queued and the "
                "API's sweep sends it again",
                job_id,
                unreachable,
            )
            return
        log.info("job %s: attempt %d started", job_id, claim.attempt)
        checkpointing = Checkpointing(local_checkpoints(settings), job_id)
        try:
            with AttemptReporter(
                client, claim, settings.heartbeat_seconds, checkpointing.folder
            ) as reporter:
                try:
                    _train_and_report(claim, reporter, checkpointing, client, settings)
                except (ApiUnreachable, ApiRefused) as error:
                    # The attempt's last word (finish or hand-back) never arrived: its lease
                    # runs out and the API's sweep queues the job again, to resume from the
                    # last checkpoint the API recorded.
                    log.error(
                        "job %s: attempt %d could not report how it ended: %s; the API "
                        "queues it again once its lease runs out",
                        job_id,
                        claim.attempt,
                        error,
                    )
        finally:
            # Everything in it was uploaded (or given up on) once the reporter has closed;
            # an attempt that resumes the job downloads what it needs from the API.
            checkpointing.discard()
    finally:
        client.close()


def local_checkpoints(settings: Settings) -> Path:
    """The worker's checkpoint folder: a sub-folder of its own, so that even a worker_dir
    set to the API's artifact_dir never touches the API's files."""
    return settings.worker_dir / "checkpoints"


def _train_and_report(
    claim: Claim,
    reporter: AttemptReporter,
    checkpointing: Checkpointing,
    client: ApiClient,
    settings: Settings,
) -> None:
    """Trains the claimed attempt and reports how it ended; raises ApiUnreachable or
    ApiRefused if that report cannot be delivered (or the checkpoint to resume from cannot
    be downloaded)."""
    job_id = claim.job_id
    try:
        # Decided once for the job, and passed down to everything that trains or evaluates.
        hardware = detect_hardware(cuda_graphs=settings.cuda_graphs)
        log.info("job %s: training on %s", job_id, hardware)
        data = mnist_on_device(str(settings.data_dir), hardware.device)
        result = None
        if claim.spec.kind == "lr_range_test":
            curve = lr_range_test(claim.spec, data, reporter, hardware)
            result = JobResult(lr_range_test=curve)
        else:
            newest = checkpointing.newest_usable(claim.checkpoints, Downloader(client, job_id))
            if newest is not None:
                log.info("job %s: resuming from %s", job_id, newest[0].name)
            resume = newest[1] if newest is not None else None
            trained = train(
                claim.spec, data, reporter, checkpointing, hardware=hardware, resume=resume
            )
            result = JobResult(split=trained.split)
    except TrainingHandedBack as handed_back:
        log.info(
            "job %s: attempt %d handed back with %d epochs done (worker shutting down)",
            job_id,
            claim.attempt,
            handed_back.epochs_completed,
        )
        reporter.hand_back(retry_seconds=settings.handback_grace_seconds)
        return
    except ApiUnreachable:
        # The API went away while the checkpoint to resume from was downloading: that is no
        # reason to fail the job, and the API could not be told anything else either.
        log.error("job %s: the checkpoint to resume from could not be downloaded", job_id)
        raise
    except TrainingStopped:
        log.info("job %s: attempt %d stopped (%s)", job_id, claim.attempt, reporter.stop_reason())
        if reporter.cancelled.is_set():
            reporter.finish("cancelled")
        # A pruned trial has nothing more to say: the API ended it when it said stop.
        return
    except Exception as error:
        log.exception("job %s: attempt %d failed", job_id, claim.attempt)
        reporter.finish("failed", describe_failure(error))
        return
    outcome: FinishStatus = "cancelled" if reporter.cancelled.is_set() else "succeeded"
    reporter.finish(outcome, result=result)
    log.info("job %s: attempt %d finished", job_id, claim.attempt)
