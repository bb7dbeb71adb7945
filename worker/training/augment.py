"""Random rotation and translation of a whole batch at once, on the training device.

One affine grid per image, sampled together by grid_sample: no per-image Python and
no PIL. It runs on pixel values in [0, 1], so the border it fills in is black.
"""

import math

import torch
from torch.nn import functional

from shared.spec import AugmentSpec


class BatchAugmenter:
    def __init__(self, spec: AugmentSpec) -> None:
        self.max_radians = math.radians(spec.rotation_degrees)
        # affine_grid works in [-1, 1] coordinates: a shift of a fraction f of the width is 2f.
        self.max_shift = 2.0 * spec.translate

    @property
    def active(self) -> bool:
        return self.max_radians > 0 or self.max_shift > 0

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """images: float [N, 1, H, W] in [0, 1]; returns a new tensor of the same shape."""
        count = images.shape[0]

        def uniform(limit: float) -> torch.Tensor:
            draw = torch.rand(count, generator=generator, device="cpu").to(images.device)
            return (draw * 2 - 1) * limit

        angle = uniform(self.max_radians)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos, -sin, uniform(self.max_shift)], dim=1),
                torch.stack([sin, cos, uniform(self.max_shift)], dim=1),
            ],
            dim=1,
        ).to(images.dtype)
        grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
        return functional.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
