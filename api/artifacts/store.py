"""The API's checkpoint store: what a folder and a bucket both offer, under `{job_id}/{name}`.

Workers upload checkpoints over HTTP and the API keeps them here; nothing else writes to it.
A file reaches the store only once its SHA-256 has been checked, and appears under its final
key whole or not at all.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Large enough that a download is not a syscall per few kilobytes, small enough to stream.
CHUNK_BYTES = 1024 * 1024
# The store's keys are made of these two parts only, so neither can climb out of the job's
# folder or prefix (no slashes, no leading dot).
PLAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


@dataclass(frozen=True)
class StoredMeta:
    sha256: str
    size: int


@dataclass
class StoredObject:
    """An open stored file: its size, and its bytes in chunks. The chunks close what they
    read from when they are exhausted or closed."""

    size: int
    chunks: Iterator[bytes]


class ArtifactStore(Protocol):
    @property
    def staging_dir(self) -> Path:
        """A local folder for a file on its way in, from which put() takes it cheaply."""
        ...

    def put(self, job_id: str, name: str, source: Path, sha256: str) -> None:
        """Keeps `source` (whose SHA-256 the caller has checked) as the job's `name`,
        replacing any earlier file of that name at once. `source` is gone afterwards."""
        ...

    def head(self, job_id: str, name: str) -> StoredMeta | None:
        """The stored file's SHA-256 and size, or None if there is none."""
        ...

    def open(self, job_id: str, name: str) -> StoredObject | None:
        """The stored file, to stream, or None if there is none."""
        ...

    def delete_job(self, job_id: str) -> None:
        """Removes every file of the job; a failure is logged, not raised."""
        ...
