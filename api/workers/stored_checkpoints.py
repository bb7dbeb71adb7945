"""A checkpoint record that an epoch post carries names a file the store holds, byte for
byte: the API never records a checkpoint it could not serve."""

from api.artifacts.store import ArtifactStore, StoredMeta
from api.web.errors import CheckpointNotStored
from shared.messages import CheckpointRecord
from shared.protocol import checkpoint_path


def require_stored(store: ArtifactStore, job_id: str, record: CheckpointRecord) -> None:
    stored = store.head(job_id, record.name)
    if stored is None:
        raise CheckpointNotStored(
            f"checkpoint {record.name} was never uploaded; PUT it to "
            f"{checkpoint_path(job_id, record.name)} first"
        )
    if stored != StoredMeta(record.sha256, record.bytes):
        raise CheckpointNotStored(
            f"the stored {record.name} ({stored.size} bytes, SHA-256 {stored.sha256}) is not "
            f"the one recorded ({record.bytes} bytes, SHA-256 {record.sha256})"
        )
