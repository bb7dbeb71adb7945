"""MNIST held as uint8 tensors on the training device, batched without per-image Python."""

from dataclasses import dataclass
from pathlib import Path

import torch

from shared.idx import read_idx
from worker.mnist_files import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, raw_dir
from worker.training.augment import BatchAugmenter

# The training set's statistics, as every MNIST example uses them.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def first(self, count: int | None) -> "Split":
        if count is None or count >= len(self):
            return self
        return Split(self.images[:count], self.labels[:count])

    def take(self, indices: torch.Tensor) -> "Split":
        """The images at `indices` (int64, on any device), in that order."""
        indices = indices.to(self.labels.device)
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class MnistTensors:
    train: Split
    test: Split

    def to(self, device: torch.device) -> "MnistTensors":
        return MnistTensors(
            Split(self.train.images.to(device), self.train.labels.to(device)),
            Split(self.test.images.to(device), self.test.labels.to(device)),
        )


def _load_idx(path: Path) -> torch.Tensor:
    shape, payload = read_idx(path.read_bytes())
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(shape)


def load_mnist(data_dir: Path, device: torch.device | None = None) -> MnistTensors:
    folder = raw_dir(data_dir)
    data = MnistTensors(
        Split(_load_idx(folder / TRAIN_IMAGES), _load_idx(folder / TRAIN_LABELS).long()),
        Split(_load_idx(folder / TEST_IMAGES), _load_idx(folder / TEST_LABELS).long()),
    )
    return data.to(device) if device is not None else data


class InputTransform:
    """uint8 images to the float batch the model sees: scaled, maybe augmented, maybe
    standardised."""

    def __init__(self, normalize: bool, augmenter: BatchAugmenter | None = None) -> None:
        self.mean, self.std = (MNIST_MEAN, MNIST_STD) if normalize else (0.0, 1.0)
        # Without augmentation, one fused multiply-add per pixel: (x / 255 - mean) / std.
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = self.mean / self.std
        self.augmenter = augmenter if augmenter is not None and augmenter.active else None

    def __call__(
        self, images: torch.Tensor, train: bool = False, draws: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A training batch is augmented, by `draws` (BatchAugmenter.draw's, on the images'
        device) if given, else by draws made here."""
        batch = images.unsqueeze(1).to(torch.float32)
        if train and self.augmenter is not None:
            augmented = self.augmenter(batch.mul_(1.0 / 255.0), draws=draws)
            return augmented.sub_(self.mean).div_(self.std)
        return batch.mul_(self.scale).sub_(self.shift)
