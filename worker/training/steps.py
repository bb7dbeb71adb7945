"""One optimizer step on a batch of the training split, as PyTorch runs it op by op, and the
epoch's sums it keeps on the device.

Nothing here reads a tensor back to the host: the loss and the correct predictions are summed
where they are computed and read once, when the epoch ends. On a GPU the epoch's shuffled
order and its augmentation draws travel in one copy each from pinned memory, so no batch
waits for the host.
"""

import torch
from torch import nn

from worker.training.data import InputTransform, Split
from worker.training.device import Hardware


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`; to a GPU without making the host wait for the copy."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class EpochDraws:
    """The augmentation draws of an epoch's batches, in order.

    On a GPU they are drawn for the whole epoch when it starts and sent in one copy, which
    gives the same numbers as drawing them batch by batch: the CPU generator draws uniforms
    one after another, and nothing else draws from it while a GPU trains (dropout there uses
    the GPU's generator). On the CPU, where dropout does draw from it between batches, each
    batch draws its own as it comes (`take` answers None).
    """

    def __init__(self, transform: InputTransform, device: torch.device) -> None:
        self.augmenter = transform.augmenter
        self.device = device
        self.ahead = self.augmenter is not None and device.type == "cuda"
        self.flat: torch.Tensor | None = None
        self.offset = 0

    def start_epoch(self, images: int) -> None:
        """`images`: how many the epoch trains on, in all its batches."""
        if self.ahead and self.augmenter is not None:
            self.flat = to_device(self.augmenter.draw(images), self.device)
            self.offset = 0

    def take(self, count: int) -> torch.Tensor | None:
        """The next batch's draws (float [3 * count], on the device), or None."""
        if self.flat is None:
            return None
        start, self.offset = self.offset, self.offset + 3 * count
        return self.flat[start : self.offset]


class EagerStep:
    """Forward, backward and the optimizer's step on one batch, kernel by kernel."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        transform: InputTransform,
        train_split: Split,
        hardware: Hardware,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.transform = transform
        self.images = train_split.images
        self.labels = train_split.labels
        self.hardware = hardware
        device = hardware.device
        # The epoch's sums: the same two tensors all job long, which a captured step adds to.
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)

    def start_epoch(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, batch: torch.Tensor, draws: torch.Tensor | None = None) -> None:
        """Trains on the images at `batch` (int64 indices on the device); `draws` augment
        them, if the job augments and they were drawn ahead."""
        images = self.transform(self.images[batch], train=True, draws=draws)
        labels = self.labels[batch]
        with self.hardware.autocast():
            logits = self.model(images)
            loss = self.loss_fn(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.add_to_sums(loss, logits, labels)

    def add_to_sums(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * labels.shape[0]
        self.correct += (logits.detach().argmax(dim=1) == labels).sum()

    def sums(self) -> tuple[float, int]:
        """The epoch's summed loss and count of correct predictions: read back once."""
        return float(self.loss_sum), int(self.correct)
