"""Advice on an architecture, as the classic MNIST tuning notes teach it.

Each rule looks at the layers and their analysis and says what to change and why;
none of them rejects a model.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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

# Pool once the features are edges and gradients, not raw pixels: about 5x5 to 7x7.
MIN_RECEPTIVE_FIELD_BEFORE_POOLING = 5
# An MNIST digit sits in a 20x20 box of the 28x28 image.
DIGIT_SIZE = 20
# Layers after the last pooling that still learn from its output before the prediction.
MIN_LAYERS_AFTER_POOLING = 3


@dataclass(frozen=True)
class Advice:
    layer: int | None
    code: str
    message: str


@dataclass(frozen=True)
class LayerFacts:
    """What the rules need from the analysis of one layer."""

    input_shape: Sequence[int]
    receptive_field_in: int
    receptive_field_out: int


Rule = Callable[[Sequence[Layer], Sequence[LayerFacts]], Iterator[Advice]]

POOLS = (MaxPoolLayer, AvgPoolLayer)
GLOBAL = (GlobalAvgPoolLayer, FlattenLayer, LinearLayer)
LEARNING = (ConvLayer, LinearLayer)


def early_pooling(layers: Sequence[Layer], facts: Sequence[LayerFacts]) -> Iterator[Advice]:
    for index, layer in enumerate(layers):
        seen = facts[index].receptive_field_in
        if isinstance(layer, POOLS) and seen < MIN_RECEPTIVE_FIELD_BEFORE_POOLING:
            yield Advice(
                index,
                "early_pooling",
                f"this {layer.type} comes when the receptive field is only {seen}x{seen}: "
                "pooling raw pixels throws away detail before edges are found; pool "
                "once the receptive field is about 5x5 to 7x7",
            )


def pooling_near_output(layers: Sequence[Layer], _facts: Sequence[LayerFacts]) -> Iterator[Advice]:
    for index, layer in enumerate(layers):
        if not isinstance(layer, MaxPoolLayer):
            continue
        learning_after = sum(isinstance(later, LEARNING) for later in layers[index + 1 :])
        if learning_after < MIN_LAYERS_AFTER_POOLING:
            yield Advice(
                index,
                "pooling_near_output",
                f"max-pooling with only {learning_after} learning layer(s) after it: "
                "so close to the output it discards what the prediction needs; keep it "
                "at least three layers from the output",
            )


def widening_one_by_one(layers: Sequence[Layer], facts: Sequence[LayerFacts]) -> Iterator[Advice]:
    for index, layer in enumerate(layers):
        if not isinstance(layer, ConvLayer) or layer.kernel_size != 1:
            continue
        channels_in = facts[index].input_shape[0]
        if layer.out_channels > channels_in:
            yield Advice(
                index,
                "widening_1x1",
                f"a 1x1 convolution from {channels_in} to {layer.out_channels} channels: "
                "1x1 convolutions are cheap ways to cut channels (often after a pool); "
                "widening here adds parameters without seeing more of the image",
            )


def receptive_field_misses_the_digit(
    layers: Sequence[Layer], facts: Sequence[LayerFacts]
) -> Iterator[Advice]:
    for index, layer in enumerate(layers):
        if isinstance(layer, GLOBAL) and len(facts[index].input_shape) == 3:
            seen = facts[index].receptive_field_in
            if seen < DIGIT_SIZE:
                yield Advice(
                    index,
                    "small_receptive_field",
                    f"the features reaching this {layer.type} have seen only "
                    f"{seen}x{seen} pixels, less than a digit ({DIGIT_SIZE}x{DIGIT_SIZE}); "
                    "add convolutions or a pool before it",
                )
            return


def dropout_at_the_output(
    layers: Sequence[Layer], _facts: Sequence[LayerFacts]
) -> Iterator[Advice]:
    last = len(layers) - 1
    layer = layers[last]
    dropped = isinstance(layer, DropoutLayer) or (
        isinstance(layer, LinearLayer | ConvLayer) and (layer.dropout or 0) > 0
    )
    if dropped:
        yield Advice(
            last,
            "dropout_on_output",
            "dropout on the last layer drops the predictions themselves; put dropout "
            "after the hidden convolutions instead",
        )


def activation_on_the_output(
    layers: Sequence[Layer], _facts: Sequence[LayerFacts]
) -> Iterator[Advice]:
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        if isinstance(layer, LEARNING):
            if layer.activation != "none":
                yield Advice(
                    index,
                    "activation_on_output",
                    f"the layer that produces the class scores applies "
                    f"{layer.activation}: scores must be free to go negative before "
                    'the softmax; set its activation to "none"',
                )
            return


RULES: tuple[Rule, ...] = (
    early_pooling,
    pooling_near_output,
    widening_one_by_one,
    receptive_field_misses_the_digit,
    dropout_at_the_output,
    activation_on_the_output,
)


def advise(layers: Sequence[Layer], facts: Sequence[LayerFacts]) -> list[Advice]:
    return [advice for rule in RULES for advice in rule(layers, facts)]
