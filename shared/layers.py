"""The layers of a model, as a job spec and a preset give them: a union keyed by `type`.

Supporting another layer type means adding its model to `Layer` here and a builder for it
in the worker.
"""

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from shared.strict import StrictModel

Activation = Literal["relu", "leaky_relu", "gelu", "silu", "tanh", "none"]
# Every integer a client sends in a spec is at most this (the database's integer columns are
# 32-bit). The service's own limits (TUNELAB_MAX_CHANNELS, ...) are far lower and checked
# later; this bound keeps a width of 10**4000 out of the arithmetic and the messages that
# come before them (its square has more digits than Python will print).
MAX_INT32 = 2**31 - 1
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class ConvLayer(StrictModel):
    type: Literal["conv"]
    out_channels: int = Field(ge=1, le=MAX_INT32)
    kernel_size: int = Field(default=3, ge=1, le=28)
    stride: int = Field(default=1, ge=1, le=28)
    padding: int = Field(default=0, ge=0, le=14)
    batch_norm: bool = False
    # None takes the model-wide `model.dropout`.
    dropout: Probability | None = None
    activation: Activation = "relu"


class MaxPoolLayer(StrictModel):
    type: Literal["maxpool"]
    kernel_size: int = Field(default=2, ge=1, le=28)
    # None means the kernel size, as in torch.
    stride: int | None = Field(default=None, ge=1, le=28)
    padding: int = Field(default=0, ge=0, le=14)


class AvgPoolLayer(StrictModel):
    type: Literal["avgpool"]
    kernel_size: int = Field(default=2, ge=1, le=28)
    stride: int | None = Field(default=None, ge=1, le=28)
    padding: int = Field(default=0, ge=0, le=14)


class GlobalAvgPoolLayer(StrictModel):
    type: Literal["gap"]


class FlattenLayer(StrictModel):
    type: Literal["flatten"]


class LinearLayer(StrictModel):
    type: Literal["linear"]
    out_features: int = Field(ge=1, le=MAX_INT32)
    activation: Activation = "none"
    dropout: Probability = 0.0


class DropoutLayer(StrictModel):
    type: Literal["dropout"]
    p: Probability = 0.5


Layer = Annotated[
    ConvLayer
    | MaxPoolLayer
    | AvgPoolLayer
    | GlobalAvgPoolLayer
    | FlattenLayer
    | LinearLayer
    | DropoutLayer,
    Field(discriminator="type"),
]

# Validates a list of layers given as plain data (JSON, or a preset's table).
LAYER_LIST: TypeAdapter[list[Layer]] = TypeAdapter(list[Layer])
