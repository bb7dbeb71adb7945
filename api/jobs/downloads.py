"""A recorded checkpoint streamed from the store, for a tenant's download and for a worker
that resumes from it: in chunks, never read into memory whole."""

from urllib.parse import quote

from fastapi.responses import StreamingResponse

from api.artifacts.store import ArtifactStore
from api.core.models import CheckpointRow
from api.web.errors import CheckpointNotFound
from shared.protocol import CHECKPOINT_SHA256_HEADER


def checkpoint_response(store: ArtifactStore, row: CheckpointRow) -> StreamingResponse:
    """The row's file, with the SHA-256 it was recorded with to check it against; 404 when
    the store has no such file."""
    stored = store.open(row.job_id, row.name)
    if stored is None:
        raise CheckpointNotFound(f"job {row.job_id} has no checkpoint {row.name!r}")
    # Quoted as Starlette's FileResponse quotes it; recorded names are plain anyway.
    filename = quote(row.name)
    return StreamingResponse(
        stored.chunks,
        media_type="application/octet-stream",
        headers={
            CHECKPOINT_SHA256_HEADER: row.sha256,
            "Content-Length": str(stored.size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )
