"""`tunelab api` under uvicorn, in one process or several (`--workers N`).

Each of the N processes builds the app with `api.main:create_app` and runs its lifespan, so
each starts a dispatch sweep and a study scheduler; their leases in the database let only one
process run each loop at a time (api.core.leases). prometheus-client's multiprocess mode needs a
folder that all N processes share, named before they start and empty: unless the operator set
PROMETHEUS_MULTIPROC_DIR, `tunelab api` makes a fresh temporary one (under TMPDIR, /tmp by
default) and removes it when the API stops. A folder the operator set is left as it is: they
may share it between several `tunelab api` commands, and empty it before the first starts.
"""

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.settings import Settings

log = logging.getLogger(__name__)

APP_FACTORY = "api.main:create_app"


def serve(settings: Settings, host: str, port: int, workers: int, log_format: str) -> None:
    """Runs uvicorn until it is stopped (SIGTERM or Ctrl-C stops every process)."""
    import uvicorn

    if workers > 1 and not settings.rate_limit_url:
        log.warning(
            "%d API processes count requests each on their own: set TUNELAB_RATE_LIMIT_URL "
            "to a redis:// URL so that the rate limits hold across them",
            workers,
        )
    with metrics_folder(workers):
        # The settings are read again from the same environment in each process.
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            log_config=log_config(log_format),
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )


@contextmanager
def metrics_folder(workers: int) -> Iterator[str | None]:
    """The PROMETHEUS_MULTIPROC_DIR the API processes share: the operator's, or for more than
    one process a fresh temporary folder, removed afterwards; None for one process."""
    # prometheus-client's own switch, read when it is imported; the name lives in api.ops.metrics.
    from api.ops.metrics import MULTIPROCESS_ENV

    chosen = os.environ.get(MULTIPROCESS_ENV)
    if chosen:
        os.makedirs(chosen, exist_ok=True)
        yield chosen
        return
    if workers <= 1:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="tunelab-prometheus-")
    # Set before uvicorn starts the processes, which inherit it.
    os.environ[MULTIPROCESS_ENV] = folder
    log.info("%d API processes share their metrics through %s", workers, folder)
    try:
        yield folder
    finally:
        del os.environ[MULTIPROCESS_ENV]
        shutil.rmtree(folder, ignore_errors=True)


def log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's logging, plus Tunelab's own loggers at INFO: uvicorn applies it in each
    process it starts, which a logging.basicConfig in this one would not reach."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["tunelab"] = {"format": log_format}
    config["handlers"]["tunelab"] = {
        "class": "logging.StreamHandler",
        "formatter": "tunelab",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["tunelab"], "level": "INFO"}
    return config
