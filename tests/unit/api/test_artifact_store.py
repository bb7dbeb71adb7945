"""The checkpoint store's contract, held by both kinds: a folder, and a bucket on moto's
standalone S3 server (a real process speaking the S3 protocol; it emulates S3)."""

import hashlib
import logging
from pathlib import Path

import pytest

from api.artifacts.from_settings import store_from_settings
from api.artifacts.local import LocalStore
from api.artifacts.s3 import S3Store
from api.artifacts.store import ArtifactStore, StoredMeta
from api.web.errors import StoreUnavailable
from shared.settings import Settings
from tests.moto_server import S3Server


def s3_store(s3_server: S3Server, tmp_path: Path, prefix: str = "runs/a") -> S3Store:
    return S3Store(s3_server.client(), s3_server.new_bucket(), prefix, tmp_path / "staging")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts")
    (tmp_path / "staging").mkdir()
    return s3_store(request.getfixturevalue("s3_server"), tmp_path)


def staged(store: ArtifactStore, payload: bytes) -> tuple[Path, str]:
    """A file in the store's staging folder, as an upload leaves it, and its SHA-256."""
    path = store.staging_dir / f".upload-{hashlib.sha256(payload).hexdigest()[:8]}.partial"
    path.write_bytes(payload)
    return path, hashlib.sha256(payload).hexdigest()


def read(store: ArtifactStore, job_id: str, name: str) -> bytes | None:
    stored = store.open(job_id, name)
    if stored is None:
        return None
    payload = b"".join(stored.chunks)
    assert len(payload) == stored.size
    return payload


class TestContract:
    def test_a_put_file_is_there_by_its_sha256_and_size_and_reads_back(self, store):
        payload = b"weights" * 1000
        source, sha256 = staged(store, payload)
        store.put("job_1", "epoch-000.pt", source, sha256)
        assert store.head("job_1", "epoch-000.pt") == StoredMeta(sha256, len(payload))
        assert read(store, "job_1", "epoch-000.pt") == payload
        # Taken over by the store: nothing is left behind in the staging folder.
        assert not source.exists()

    def test_a_file_larger_than_a_chunk_streams_in_chunks(self, store):
        payload = bytes(range(256)) * (9 * 1024 * 4)  # 9 MiB: several chunks, and multipart
        source, sha256 = staged(store, payload)
        store.put("job_1", "big.pt", source, sha256)
        stored = store.open("job_1", "big.pt")
        assert stored is not None
        chunks = list(stored.chunks)
        assert len(chunks) > 1
        assert hashlib.sha256(b"".join(chunks)).hexdigest() == sha256

    def test_a_missing_file_is_none(self, store):
        assert store.head("job_1", "epoch-000.pt") is None
        assert store.open("job_1", "epoch-000.pt") is None

    def test_a_put_replaces_the_file_of_that_name(self, store):
        for payload in (b"first", b"written again"):
            source, sha256 = staged(store, payload)
            store.put("job_1", "epoch-000.pt", source, sha256)
        assert read(store, "job_1", "epoch-000.pt") == b"written again"
        assert store.head("job_1", "epoch-000.pt") == StoredMeta(
            hashlib.sha256(b"written again").hexdigest(), len(b"written again")
        )

    def test_deleting_a_job_removes_its_files_and_no_other_jobs(self, store):
        # job_1 is a prefix of job_10's name: only the folder (or key prefix) job_1/ goes.
        for job_id, name in (("job_1", "a.pt"), ("job_1", "b.pt"), ("job_10", "a.pt")):
            source, sha256 = staged(store, f"{job_id}/{name}".encode())
            store.put(job_id, name, source, sha256)
        store.delete_job("job_1")
        assert store.head("job_1", "a.pt") is None
        assert store.head("job_1", "b.pt") is None
        assert read(store, "job_10", "a.pt") == b"job_10/a.pt"

    def test_deleting_a_job_without_files_is_harmless(self, store, caplog):
        source, sha256 = staged(store, b"another job's weights")
        store.put("job_1", "a.pt", source, sha256)
        with caplog.at_level(logging.WARNING, logger="api.artifacts"):
            store.delete_job("job_never")
        # The store logs a delete that fails instead of raising: nothing to delete is no
        # failure, so nothing is logged, and no other job's file goes.
        assert [r.getMessage() for r in caplog.records if r.name.startswith("api.artifacts")] == []
        assert read(store, "job_1", "a.pt") == b"another job's weights"


class TestLocalStore:
    def test_keeps_the_job_folder_layout_so_earlier_files_stay_valid(self, tmp_path):
        # A file written where checkpoints have always lived, before the store existed.
        folder = tmp_path / "artifacts" / "job_1"
        folder.mkdir(parents=True)
        (folder / "epoch-000.pt").write_bytes(b"old weights")
        store = LocalStore(tmp_path / "artifacts")
        assert store.head("job_1", "epoch-000.pt") == StoredMeta(
            hashlib.sha256(b"old weights").hexdigest(), len(b"old weights")
        )
        assert read(store, "job_1", "epoch-000.pt") == b"old weights"

    def test_a_symlink_out_of_the_root_is_treated_as_absent(self, tmp_path):
        secret = tmp_path / "secret.pt"
        secret.write_bytes(b"secret")
        root = tmp_path / "artifacts"
        (root / "job_1").mkdir(parents=True)
        (root / "job_1" / "linked.pt").symlink_to(secret)
        (root / "job_2").symlink_to(tmp_path, target_is_directory=True)
        store = LocalStore(root)
        for job_id, name in (("job_1", "linked.pt"), ("job_2", "secret.pt"), ("..", "secret.pt")):
            assert store.head(job_id, name) is None
            assert store.open(job_id, name) is None
        source, sha256 = staged(store, b"x")
        with pytest.raises(ValueError, match="would leave the artifact root"):
            store.put("job_2", "secret.pt", source, sha256)
        assert secret.read_bytes() == b"secret"


class TestS3Store:
    def test_objects_live_under_the_prefix_with_their_sha256(self, s3_server, tmp_path):
        (tmp_path / "staging").mkdir()
        store = s3_store(s3_server, tmp_path, prefix="/runs/a/")
        source, sha256 = staged(store, b"weights")
        store.put("job_1", "epoch-000.pt", source, sha256)
        client = store.client
        listed = client.list_objects_v2(Bucket=store.bucket)["Contents"]
        assert [item["Key"] for item in listed] == ["runs/a/job_1/epoch-000.pt"]
        head = client.head_object(Bucket=store.bucket, Key="runs/a/job_1/epoch-000.pt")
        assert head["Metadata"] == {"sha256": sha256}

    def test_an_object_without_a_recorded_sha256_vouches_for_nothing(self, s3_server, tmp_path):
        store = s3_store(s3_server, tmp_path)
        store.client.put_object(Bucket=store.bucket, Key="runs/a/job_1/x.pt", Body=b"planted")
        assert store.head("job_1", "x.pt") is None

    def test_a_store_that_cannot_be_reached_is_unavailable(self, tmp_path):
        server = S3Server("http://127.0.0.1:9")  # nothing listens on the discard port
        store = S3Store(server.client(), "tunelab-none", "", tmp_path)
        source = tmp_path / "upload.partial"
        source.write_bytes(b"x")
        with pytest.raises(StoreUnavailable):
            store.head("job_1", "x.pt")
        with pytest.raises(StoreUnavailable):
            store.put("job_1", "x.pt", source, hashlib.sha256(b"x").hexdigest())

    def test_settings_choose_the_bucket_and_boto3_finds_the_endpoint_itself(
        self, s3_server, monkeypatch, tmp_path
    ):
        for name, value in s3_server.env().items():
            monkeypatch.setenv(name, value)
        # Nothing from this machine's own AWS configuration.
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        bucket = s3_server.new_bucket()
        store = store_from_settings(Settings(artifact_url=f"s3://{bucket}/checkpoints"))
        assert isinstance(store, S3Store)
        assert (store.bucket, store.prefix) == (bucket, "checkpoints/")
        source, sha256 = staged(store, b"weights")
        store.put("job_1", "epoch-000.pt", source, sha256)
        assert store.head("job_1", "epoch-000.pt") == StoredMeta(sha256, len(b"weights"))

    def test_an_empty_url_keeps_checkpoints_in_the_artifact_dir(self, tmp_path):
        store = store_from_settings(Settings(artifact_dir=tmp_path / "artifacts"))
        assert isinstance(store, LocalStore)
        assert store.root == tmp_path / "artifacts"

    @pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "gs://bucket", "/var/artifacts"])
    def test_anything_but_a_bucket_url_is_refused(self, url):
        with pytest.raises(ValueError, match="s3://bucket"):
            Settings(artifact_url=url)
