"""Ringing the broker's doorbell: only a job id crosses it."""

import logging
from typing import Protocol

from celery import Celery

from shared.broker import TRAIN_TASK, celery_config, make_broker_folders
from shared.settings import Settings

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def send(self, job_id: str) -> bool: ...

    def ping(self) -> None: ...


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        make_broker_folders(settings)
        self.queue = settings.queue
        self.app = Celery("tunelab-api")
        self.app.conf.update(celery_config(settings))

    def send(self, job_id: str) -> bool:
        """True once the broker holds the message; False leaves it to the dispatch sweep."""
        try:
            self.app.send_task(TRAIN_TASK, args=[job_id], queue=self.queue)
        except Exception as error:  # noqa: BLE001 - any broker failure means "not sent yet"
            log.warning("job %s stored but not sent to the broker: %s", job_id, error)
            return False
        return True

    def ping(self) -> None:
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
