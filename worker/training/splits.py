"""Which training images a job holds out to validate on, and which it trains on.

The held-out images are drawn digit by digit, the same number of each as near as the file
allows, by a generator seeded with `data.validation_seed` alone: jobs that differ in anything
else, their own `seed` included, hold out the same images. The job trains on the others in
the order of the file, and `data.train_subset` takes the first N of those; with nothing held
out, a job trains on exactly the images it trained on before validation existed.
"""

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shared.messages import DataSplit
from shared.spec import MNIST_CLASSES, DataSpec


def stratified_quotas(available: Sequence[int], count: int) -> list[int]:
    """How many images of each class to hold out: `count` shared out as evenly as the classes'
    sizes allow. A class too small for its share gives all it has, and the others share the
    rest; where the count does not divide evenly, the larger classes take one more."""
    if count > sum(available):
        raise ValueError(
            f"cannot hold out {count} images for validation: the training file has {sum(available)}"
        )
    quotas = [0] * len(available)
    left = count
    # Smallest classes first: each takes its fair share of what is left, or all it has.
    by_size = sorted(range(len(available)), key=lambda label: (available[label], label))
    for position, label in enumerate(by_size):
        fair = left // (len(by_size) - position)
        quotas[label] = min(available[label], fair)
        left -= quotas[label]
    return quotas


def validation_indices(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The ascending indices (int64, on the CPU) of `count` images to hold out, stratified by
    label and drawn by `seed` alone."""
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    labels = labels.cpu()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    members = [torch.nonzero(labels == digit).flatten() for digit in range(MNIST_CLASSES)]
    quotas = stratified_quotas([len(indices) for indices in members], count)
    chosen = [
        indices[torch.randperm(len(indices), generator=generator)[:quota]]
        for indices, quota in zip(members, quotas, strict=True)
    ]
    return torch.cat(chosen).sort().values


def training_indices(images: int, held_out: torch.Tensor, subset: int | None) -> torch.Tensor:
    """The ascending indices of the images not held out, or the first `subset` of them."""
    keep = torch.ones(images, dtype=torch.bool)
    keep[held_out] = False
    rest = torch.nonzero(keep).flatten()
    return rest if subset is None else rest[:subset]


def indices_sha256(indices: torch.Tensor) -> str:
    """The SHA-256 of the indices, each as 8 bytes little-endian, in the order given."""
    values = indices.tolist()
    return hashlib.sha256(struct.pack(f"<{len(values)}q", *values)).hexdigest()


@dataclass(frozen=True)
class SplitIndices:
    """Indices into the training file, each ascending, never sharing an index."""

    train: torch.Tensor
    validation: torch.Tensor

    def record(self) -> DataSplit:
        return DataSplit(
            train_images=len(self.train),
            validation_images=len(self.validation),
            train_sha256=indices_sha256(self.train),
            validation_sha256=indices_sha256(self.validation),
        )


def split_training_images(labels: torch.Tensor, data: DataSpec) -> SplitIndices:
    """What a job with this `data` spec trains and validates on, given the training file's
    labels."""
    held_out = validation_indices(labels, data.validation, data.validation_seed)
    return SplitIndices(training_indices(len(labels), held_out, data.train_subset), held_out)
