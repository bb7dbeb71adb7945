"""Random rotation and translation of a whole batch at once, on the training device.

One affine grid per image, sampled together by grid_sample: no per-image Python and
no PIL. It runs on pixel values in [0, 1], so the border it fills in is black.

The random draws (an angle and two shifts per image) come from the CPU's generator, so a
seed gives the same augmentation on every device. They are drawn apart from the images they
move: on a GPU the trainer draws a whole epoch's at once and sends them over in one copy,
so that no batch waits on the host.
"""

import math

import torch
from torch.nn import functional

from shared.spec import AugmentSpec

# The rows of a batch's draws: each uniform in [0, 1), one column per image.
ANGLE, SHIFT_X, SHIFT_Y = range(3)
DRAWS_PER_IMAGE = 3


class BatchAugmenter:
    def __init__(self, spec: AugmentSpec) -> None:
        self.max_radians = math.radians(spec.rotation_degrees)
        # affine_grid works in [-1, 1] coordinates: a shift of a fraction f of the width is 2f.
        self.max_shift = 2.0 * spec.translate

    @property
    def active(self) -> bool:
        return self.max_radians > 0 or self.max_shift > 0

    @staticmethod
    def draw(images: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """float [3 * images] on the CPU: a batch's draws, or (concatenated) those of
        consecutive batches, which come out the same either way."""
        return torch.rand(DRAWS_PER_IMAGE * images, generator=generator, device="cpu")

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        draws: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images: float [N, 1, H, W] in [0, 1]; returns a new tensor of the same shape.
        `draws` (float [3 * N], on the images' device) are drawn here if not given."""
        count = images.shape[0]
        if draws is None:
            draws = self.draw(count, generator).to(images.device)
        rows = draws.view(DRAWS_PER_IMAGE, count)
        angle = (rows[ANGLE] * 2 - 1) * self.max_radians
        shift = (rows[SHIFT_X:] * 2 - 1) * self.max_shift
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos, -sin, shift[0]], dim=1),
                torch.stack([sin, cos, shift[1]], dim=1),
            ],
            dim=1,
        ).to(images.dtype)
        grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
        return functional.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
