"""Architecture analysis without torch: shapes, receptive field, parameters, multiply-adds.

The receptive field follows the usual recurrence: a layer with kernel k and stride
s turns (r, j) into (r + (k - 1) * j, j * s), where j is the jump, the distance in
input pixels between neighbouring outputs.
"""

from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any

from shared.advice import Advice, LayerFacts, advise
from shared.layers import (
    AvgPoolLayer,
    ConvLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    Layer,
    LinearLayer,
    MaxPoolLayer,
)

MNIST_INPUT_SHAPE = (1, 28, 28)


class ArchitectureError(ValueError):
    """A model that cannot be built; `layer` is the index of the offending layer."""

    def __init__(self, layer: int | None, message: str) -> None:
        super().__init__(message)
        self.layer = layer
        self.message = message


@dataclass
class LayerAnalysis:
    index: int
    type: str
    output_shape: list[int]
    receptive_field: int
    jump: int
    parameters: int
    multiply_adds: int


@dataclass
class Analysis:
    parameters: int
    multiply_adds: int
    receptive_field: int
    output_shape: list[int]
    layers: list[LayerAnalysis]
    advice: list[Advice] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "receptive_field": self.receptive_field,
            "multiply_adds": self.multiply_adds,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _window_output(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def analyze(layers: list[Layer]) -> Analysis:
    """The analysis of `layers` on a 28x28 MNIST image."""
    shape: tuple[int, ...] = MNIST_INPUT_SHAPE
    receptive_field, jump = 1, 1
    rows: list[LayerAnalysis] = []
    facts: list[LayerFacts] = []

    for index, layer in enumerate(layers):
        input_shape, receptive_field_in = shape, receptive_field
        parameters = multiply_adds = 0
        spatial = len(shape) == 3
        if isinstance(layer, ConvLayer | MaxPoolLayer | AvgPoolLayer):
            if not spatial:
                raise ArchitectureError(index, f"a {layer.type} layer needs a [C, H, W] input")
            channels, height, width = shape
            stride = layer.stride or layer.kernel_size
            if not isinstance(layer, ConvLayer) and layer.padding * 2 > layer.kernel_size:
                # torch refuses pooling windows that are more padding than input.
                raise ArchitectureError(index, "padding must be at most half the kernel size")
            out_h = _window_output(height, layer.kernel_size, stride, layer.padding)
            out_w = _window_output(width, layer.kernel_size, stride, layer.padding)
            if out_h < 1 or out_w < 1:
                raise ArchitectureError(
                    index,
                    f"a {layer.kernel_size}x{layer.kernel_size} {layer.type} on a "
                    f"{height}x{width} input shrinks it below 1x1",
                )
            out_channels = layer.out_channels if isinstance(layer, ConvLayer) else channels
            if isinstance(layer, ConvLayer):
                weights = layer.kernel_size**2 * channels * out_channels
                # A conv followed by batch norm has no bias: the norm's shift replaces it.
                parameters = weights + (2 * out_channels if layer.batch_norm else out_channels)
                multiply_adds = weights * out_h * out_w
            receptive_field += (layer.kernel_size - 1) * jump
            jump *= stride
            shape = (out_channels, out_h, out_w)
        elif isinstance(layer, GlobalAvgPoolLayer):
            if not spatial:
                raise ArchitectureError(index, "gap needs a [C, H, W] input")
            receptive_field += (shape[1] - 1) * jump
            shape = (shape[0],)
        elif isinstance(layer, FlattenLayer):
            if spatial:
                receptive_field += (shape[1] - 1) * jump
            shape = (prod(shape),)
        elif isinstance(layer, LinearLayer):
            if spatial:
                # A linear layer on a feature map flattens it first, and sees all of it.
                receptive_field += (shape[1] - 1) * jump
            in_features = prod(shape)
            parameters = in_features * layer.out_features + layer.out_features
            multiply_adds = in_features * layer.out_features
            shape = (layer.out_features,)
        elif isinstance(layer, DropoutLayer):
            pass
        facts.append(LayerFacts(input_shape, receptive_field_in, receptive_field))
        rows.append(
            LayerAnalysis(
                index=index,
                type=layer.type,
                output_shape=list(shape),
                receptive_field=receptive_field,
                jump=jump,
                parameters=parameters,
                multiply_adds=multiply_adds,
            )
        )

    return Analysis(
        parameters=sum(row.parameters for row in rows),
        multiply_adds=sum(row.multiply_adds for row in rows),
        receptive_field=receptive_field,
        output_shape=list(shape),
        layers=rows,
        advice=advise(layers, facts),
    )
