"""The Celery settings both sides use: the API to ring the doorbell, workers to answer it."""

from pathlib import Path
from typing import Any

from shared.settings import Settings

TRAIN_TASK = "tunelab.train_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_default_queue": settings.queue,
        "task_ignore_result": True,
        # Training jobs are long: hand a message back if the worker dies holding it, take one
        # at a time, and let the lease (not the broker) decide when a job is lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # A failed publish is retried briefly; the job is already stored, and a sweep sends
        # it again later, so the client is not kept waiting on a broker that is down.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_connection_timeout": 2.0,
        "worker_hijack_root_logger": False,
    }
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_folder.resolve()
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # How often an idle worker looks for a message; kombu's default of a second
            # would be most of the time from submit to running.
            "polling_interval": 0.05,
        }
    elif settings.broker_url.startswith("redis"):
        # Longer than any job: the lease, not the broker, detects a lost worker.
        config["broker_transport_options"] = {"visibility_timeout": 7 * 24 * 3600}
    return config


def make_broker_folders(settings: Settings) -> None:
    """Creates the filesystem broker's folders, which kombu expects to exist; a no-op for
    brokers with a server."""
    options = celery_config(settings).get("broker_transport_options", {})
    for key in ("data_folder_in", "control_folder", "processed_folder"):
        if key in options:
            Path(options[key]).mkdir(parents=True, exist_ok=True)
