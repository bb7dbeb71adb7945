"""The Celery app workers run: `tunelab worker` (or `celery -A worker.celery_app worker`)."""

import logging

from celery import Celery
from celery.signals import worker_process_init, worker_shutting_down
from celery.worker.state import active_requests

from shared.broker import celery_config
from shared.settings import get_settings

log = logging.getLogger(__name__)

app = Celery("tunelab-worker", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()))


@worker_process_init.connect
def _configure_training_process(**_kwargs: object) -> None:
    # Runs in each pool child after the fork, so CUDA is first touched here, never before.
    from worker.runtime import configure_torch

    configure_torch(get_settings())


@worker_shutting_down.connect
def _hand_back_running_jobs(**_kwargs: object) -> None:
    # Celery's warm shutdown would wait for the running jobs to end; ask the pool processes
    # running one to hand it back. Idle ones are left to the pool's own shutdown.
    from worker.shutdown import forward_sigterm

    forward_sigterm(
        sorted({request.worker_pid for request in active_requests if request.worker_pid})
    )
