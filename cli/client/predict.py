"""`tunelab predict`: digits read from image files by a job's trained network.

Imported only by that command: it loads PyTorch (through worker.inference), which no
other client command needs.

An image is read as MNIST's are: 28x28 grayscale, white digit on black. Another size or
colour is converted (to grayscale, resized to 28x28) but never inverted: a dark digit on
light paper has to be inverted before (e.g. `PIL.ImageOps.invert`), because guessing which
of the two an image is would be wrong on some images.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from cli.errors import CommandFailed
from worker.inference import CheckpointUnusable, load_model, predict

SIDE = 28


@dataclass(frozen=True)
class Prediction:
    path: Path
    digit: int
    probability: float

    def line(self) -> str:
        """`PATH<TAB>DIGIT<TAB>PROBABILITY`, for `cut -f2`."""
        return f"{self.path}\t{self.digit}\t{self.probability:.4f}"


def read_image(path: Path) -> torch.Tensor:
    """The image as uint8 [28, 28]: grayscale, resized when it is another size."""
    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except (OSError, UnidentifiedImageError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CommandFailed(f"cannot read the image {path}: {reason}") from None
    if gray.size != (SIDE, SIDE):
        gray = gray.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    return torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).reshape(SIDE, SIDE)


def predict_files(checkpoint: Path, sha256: str, images: Sequence[Path]) -> list[Prediction]:
    """Each image's most likely digit and its probability, by the checkpoint's network."""
    pixels = torch.stack([read_image(path) for path in images])
    try:
        model = load_model(checkpoint, expected_sha256=sha256)
    except CheckpointUnusable as error:
        raise CommandFailed(str(error)) from None
    probabilities = predict(model, pixels)
    best, digits = probabilities.max(dim=1)
    return [
        Prediction(path, int(digit), float(probability))
        for path, digit, probability in zip(images, digits, best, strict=True)
    ]
