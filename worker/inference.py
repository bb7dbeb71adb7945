"""A trained job's network, back from its checkpoint file, for predictions outside Tunelab.

A checkpoint holds the job's stored spec beside its weights, so the network is rebuilt
from the checkpoint alone: nothing is looked up in today's presets or defaults. Training fed
the network standardized pixels (`data.normalize`); the model returned here does the same
to its input, so callers give it plain pixels and get the answers training measured:

    model = load_model("epoch-001.pt", expected_sha256="…")
    probabilities = predict(model, images)  # images: [N, 1, 28, 28] in [0, 1], or uint8
    digits = probabilities.argmax(dim=1)

MNIST digits are white on black (ink is 1.0, paper 0.0); a black-on-white scan must be
inverted before it is fed in.
"""

import hashlib
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from shared.spec import JobSpec
from worker.training.checkpoints import CheckpointUnusable, load_checkpoint
from worker.training.data import MNIST_MEAN, MNIST_STD
from worker.training.model import build_model

__all__ = ["CheckpointUnusable", "DigitClassifier", "load_model", "predict"]

SIDE = 28


class DigitClassifier(nn.Module):
    """A trained network behind the input transform it was trained with: it takes pixels in
    [0, 1] (or uint8 0-255), [N, 1, 28, 28] or [N, 28, 28], and answers the logits of the
    ten digits."""

    def __init__(self, network: nn.Module, spec: JobSpec) -> None:
        super().__init__()
        self.network = network
        self.spec = spec
        mean, std = (MNIST_MEAN, MNIST_STD) if spec.data.normalize else (0.0, 1.0)
        # Not persistent: they follow from the spec, so the state dict stays the trainer's.
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.to(torch.float32) / 255.0
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if tuple(images.shape[1:]) != (1, SIDE, SIDE):
            raise ValueError(
                f"images must be [N, 1, {SIDE}, {SIDE}] or [N, {SIDE}, {SIDE}], "
                f"not {list(images.shape)}"
            )
        mean = self.get_buffer("mean")
        std = self.get_buffer("std")
        return self.network((images.to(mean.device, torch.float32) - mean) / std)


def load_model(
    path: str | Path,
    expected_sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> DigitClassifier:
    """The network a Tunelab checkpoint file holds, on `device`, in eval mode.

    With `expected_sha256` (the checkpoint listing's `sha256`), a file whose bytes hash to
    anything else is refused with CheckpointUnusable before it is unpickled. Either way it is
    read with `torch.load(weights_only=True)`, which runs no code from the file.
    """
    path = Path(path)
    if expected_sha256 is None:
        # Nothing to check against: the file's own hash lets it through the same loader.
        try:
            expected_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            raise CheckpointUnusable(f"{path.name} cannot be read: {error.strerror}") from error
    state = load_checkpoint(path, expected_sha256.lower())
    if not isinstance(state.get("spec"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointUnusable(f"{path.name} is not a Tunelab checkpoint: no spec and model")
    try:
        spec = JobSpec.model_validate(state["spec"])
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "spec"
        raise CheckpointUnusable(
            f"{path.name} holds a spec this version cannot read: {where}: {first['msg']}"
        ) from None
    if not spec.model.layers:
        raise CheckpointUnusable(f"{path.name} holds a spec without layers")
    network = build_model(spec.model.layers, spec.model.dropout)
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointUnusable(f"{path.name}'s weights do not fit its spec: {error}") from None
    return DigitClassifier(network, spec).to(device).eval()


def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The probability of each digit, [N, 10], for images as DigitClassifier takes them."""
    model.eval()
    with torch.inference_mode():
        return torch.softmax(model(images).float(), dim=1)
