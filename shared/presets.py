"""Named model presets, listed at GET /v1/presets."""

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

if TYPE_CHECKING:
    from shared.spec import Layer


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    raw_layers: tuple[dict[str, object], ...]

    @cached_property
    def layers(self) -> "list[Layer]":
        from shared.spec import Layer

        return TypeAdapter(list[Layer]).validate_python(list(self.raw_layers))


def _conv(out_channels: int, kernel_size: int = 3, **extra: object) -> dict[str, object]:
    return {
        "type": "conv",
        "out_channels": out_channels,
        "kernel_size": kernel_size,
        "batch_norm": True,
        **extra,
    }


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset(
            name="baseline",
            description=(
                "The default: batch-normed 3x3 convolutions, one max-pool once the receptive "
                "field is 5x5, a 1x1 that narrows the channels after it, a last 3x3 convolution "
                "to 10 channels, and global average pooling."
            ),
            raw_layers=(
                _conv(8),
                _conv(16),
                {"type": "maxpool", "kernel_size": 2},
                _conv(8, kernel_size=1),
                _conv(16),
                _conv(16),
                _conv(16),
                # The class scores: no batch norm and no activation before the softmax.
                {"type": "conv", "out_channels": 10, "kernel_size": 3, "activation": "none"},
                {"type": "gap"},
            ),
        ),
    ]
}
