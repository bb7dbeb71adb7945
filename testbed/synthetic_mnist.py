"""Small MNIST-shaped IDX files written by the tests and benchmarks themselves: nothing here
downloads anything.

Each class is a fixed random 28x28 pattern plus noise, so a small CNN can learn it
in a few batches and accuracy means something.
"""

import random
from collections.abc import Sequence
from math import prod
from pathlib import Path

from shared.idx import IdxFormatError, idx_header
from worker.mnist_files import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    raw_dir,
    record_checked,
)

SIDE = 28


def write_idx(path: Path, shape: Sequence[int], data: bytes) -> None:
    """An IDX file of `shape` holding `data`, which must fill it exactly."""
    if len(data) != prod(shape):
        raise IdxFormatError(f"{len(data)} bytes do not fill the shape {list(shape)}")
    path.write_bytes(idx_header(shape) + data)


def _patterns(rng: random.Random) -> list[bytes]:
    return [
        bytes(rng.choice((0, 255)) if rng.random() < 0.3 else 0 for _ in range(SIDE * SIDE))
        for _ in range(10)
    ]


def _split(count: int, patterns: list[bytes], rng: random.Random) -> tuple[bytes, bytes]:
    labels = bytes(rng.randrange(10) for _ in range(count))
    images = bytearray()
    for label in labels:
        noisy = bytearray(patterns[label])
        for _ in range(40):
            noisy[rng.randrange(SIDE * SIDE)] = rng.randrange(256)
        images += noisy
    return bytes(images), labels


def write_synthetic_mnist(
    data_dir: Path, train: int = 2000, test: int = 500, seed: int = 0
) -> Path:
    rng = random.Random(seed)
    patterns = _patterns(rng)
    folder = raw_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for images_name, labels_name, count in (
        (TRAIN_IMAGES, TRAIN_LABELS, train),
        (TEST_IMAGES, TEST_LABELS, test),
    ):
        images, labels = _split(count, patterns, rng)
        write_idx(folder / images_name, [count, SIDE, SIDE], images)
        write_idx(folder / labels_name, [count], labels)
    # Stand-ins never match MNIST's MD5s: the writer vouches for them, as a host that
    # checked real files would, so workers train on them instead of fetching MNIST.
    record_checked(folder)
    return folder
