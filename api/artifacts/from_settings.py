"""Which checkpoint store the API keeps: a bucket when TUNELAB_ARTIFACT_URL names one,
otherwise the folder TUNELAB_ARTIFACT_DIR."""

from api.artifacts.local import LocalStore
from api.artifacts.store import ArtifactStore
from shared.settings import Settings


def store_from_settings(settings: Settings) -> ArtifactStore:
    if settings.artifact_url:
        # Imported only here: boto3 takes a quarter of a second to load, which an API that
        # keeps its checkpoints in a folder need not spend.
        from api.artifacts.s3 import S3Store

        return S3Store.from_url(settings.artifact_url)
    return LocalStore(settings.artifact_dir)
