"""The checkpoint store as a local folder: `root/{job_id}/{name}`, the layout checkpoints
have always had here, so files written before the store existed are served as they are."""

import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from api.artifacts.store import CHUNK_BYTES, PLAIN_NAME, StoredMeta, StoredObject

log = logging.getLogger(__name__)

# Inside the root, so that keeping an upload is a rename on the same filesystem; a leading
# dot keeps it apart from every job folder (job ids never start with one).
STAGING = ".incoming"


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def staging_dir(self) -> Path:
        folder = self.root / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _path(self, job_id: str, name: str) -> Path | None:
        """The file's path, if it stays inside the root: a name or folder that resolves
        elsewhere (a symlink planted in the root, say) is treated as absent."""
        if not (re.match(PLAIN_NAME, job_id) and re.match(PLAIN_NAME, name)):
            return None
        path = self.root / job_id / name
        return path if path.resolve() == self.root.resolve() / job_id / name else None

    def put(self, job_id: str, name: str, source: Path, sha256: str) -> None:
        target = self._path(job_id, name)
        if target is None:
            raise ValueError(f"{job_id}/{name} would leave the artifact root {self.root}")
        folder = target.parent
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            # The staging folder is on another filesystem: copied beside the target first,
            # so the rename that makes it visible is still atomic.
            partial = folder / f".{name}.{secrets.token_hex(4)}.partial"
            shutil.copyfile(source, partial)
            os.replace(partial, target)
            source.unlink()
        _sync_folder(folder)

    def head(self, job_id: str, name: str) -> StoredMeta | None:
        path = self._path(job_id, name)
        if path is None:
            return None
        digest = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as file:
                while chunk := file.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return StoredMeta(sha256=digest.hexdigest(), size=size)

    def open(self, job_id: str, name: str) -> StoredObject | None:
        path = self._path(job_id, name)
        if path is None:
            return None
        try:
            # Closed by the chunks it is handed to, once they are read or dropped.
            file = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return StoredObject(size=os.fstat(file.fileno()).st_size, chunks=_chunks_of(file))

    def delete_job(self, job_id: str) -> None:
        if not re.match(PLAIN_NAME, job_id):
            return
        folder = self.root / job_id
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as error:
            # The job's rows are already gone: a folder left behind holds nothing anyone can
            # reach through the API, only disk space.
            log.warning("could not remove the artifacts of job %s at %s: %s", job_id, folder, error)


def _chunks_of(file: BinaryIO) -> Iterator[bytes]:
    with file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk


def _sync_folder(folder: Path) -> None:
    """Makes a rename into `folder` survive a crash of the machine, not only of the process."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
