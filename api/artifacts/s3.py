"""The checkpoint store as an S3-compatible bucket: `s3://bucket/prefix` holds
`prefix/{job_id}/{name}`.

boto3 finds the endpoint, region and credentials itself (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, a profile or an instance role), as every AWS tool
does. An object's SHA-256 rides in its metadata, so a HEAD answers for it without reading the
object. An upload is checked on the API's disk before it is put, and a PUT is atomic: an object
appears under its final key whole and verified, or not at all.
"""

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from api.artifacts.store import CHUNK_BYTES, StoredMeta, StoredObject
from api.web.errors import StoreUnavailable

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"
MISSING = {"404", "NoSuchKey", "NotFound"}
# DeleteObjects takes at most this many keys a call.
DELETE_BATCH = 1000


def _unavailable(action: str, error: Exception) -> StoreUnavailable:
    log.error("checkpoint store: %s failed: %s", action, error)
    return StoreUnavailable(f"the checkpoint store could not {action}; try again later")


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in MISSING


class S3Store:
    def __init__(
        self, client: Any, bucket: str, prefix: str = "", staging_dir: Path | None = None
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._staging_dir = staging_dir

    @classmethod
    def from_url(cls, url: str) -> "S3Store":
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        # Standard mode retries throttling and 5xx with back-off, within each call.
        client = boto3.client("s3", config=Config(retries={"mode": "standard"}))
        return cls(client, bucket, prefix)

    @property
    def staging_dir(self) -> Path:
        # Uploads wait on the API's local disk while they are hashed, before the PUT.
        return self._staging_dir or Path(tempfile.gettempdir())

    def _key(self, job_id: str, name: str) -> str:
        return f"{self.prefix}{job_id}/{name}"

    def put(self, job_id: str, name: str, source: Path, sha256: str) -> None:
        try:
            # Multipart above boto3's threshold; S3 checks each part against its SHA-256.
            self.client.upload_file(
                str(source),
                self.bucket,
                self._key(job_id, name),
                ExtraArgs={"Metadata": {SHA256_METADATA: sha256}, "ChecksumAlgorithm": "SHA256"},
            )
        except (BotoCoreError, ClientError) as error:
            raise _unavailable(f"store {job_id}/{name}", error) from error
        finally:
            source.unlink(missing_ok=True)

    def head(self, job_id: str, name: str) -> StoredMeta | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._key(job_id, name))
        except ClientError as error:
            if _missing(error):
                return None
            raise _unavailable(f"look up {job_id}/{name}", error) from error
        except BotoCoreError as error:
            raise _unavailable(f"look up {job_id}/{name}", error) from error
        sha256 = answer.get("Metadata", {}).get(SHA256_METADATA)
        # An object put there by other means vouches for nothing.
        return None if sha256 is None else StoredMeta(sha256, int(answer["ContentLength"]))

    def open(self, job_id: str, name: str) -> StoredObject | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(job_id, name))
        except ClientError as error:
            if _missing(error):
                return None
            raise _unavailable(f"read {job_id}/{name}", error) from error
        except BotoCoreError as error:
            raise _unavailable(f"read {job_id}/{name}", error) from error
        return StoredObject(size=int(answer["ContentLength"]), chunks=_chunks_of(answer["Body"]))

    def delete_job(self, job_id: str) -> None:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(job_id, "")
            )
            keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start : start + DELETE_BATCH]
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
        except (BotoCoreError, ClientError) as error:
            # The job's rows are already gone: what is left is only storage, out of reach.
            log.warning("could not remove the artifacts of job %s from S3: %s", job_id, error)


def _chunks_of(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()
