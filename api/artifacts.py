"""The API's artifact directory: where checkpoints live, one folder per job."""

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def job_folder(artifact_dir: Path, job_id: str) -> Path:
    return artifact_dir / job_id


def remove_job_artifacts(artifact_dir: Path, job_id: str) -> None:
    """Deletes a job's checkpoint files; a failure is logged, not raised: the job's rows are
    already gone, and a folder left behind holds nothing anyone can reach through the API."""
    folder = job_folder(artifact_dir, job_id)
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("could not remove the artifacts of job %s at %s: %s", job_id, folder, error)
