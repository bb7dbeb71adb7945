"""Builds the torch network a spec's layers describe."""

from collections.abc import Callable
from math import prod

import torch
from torch import nn

from shared.analysis import analyze
from shared.layers import (
    Activation,
    AvgPoolLayer,
    ConvLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    Layer,
    LinearLayer,
    MaxPoolLayer,
)
from shared.spec import JobSpec

ACTIVATIONS: dict[Activation, Callable[[], nn.Module] | None] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "tanh": nn.Tanh,
    "none": None,
}


def _activation(name: Activation) -> list[nn.Module]:
    factory = ACTIVATIONS[name]
    return [factory()] if factory is not None else []


class SpatialMean(nn.Module):
    """Global average pooling as a mean over height and width: the average that
    AdaptiveAvgPool2d(1) and Flatten compute, through a backward pass that CUDA runs
    deterministically (adaptive pooling's has no deterministic kernel, so PyTorch refuses it
    under deterministic algorithms). No parameters: its checkpoints are the same either way."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def _block(
    layer: Layer, in_shape: list[int], model_dropout: float, deterministic: bool
) -> list[nn.Module]:
    if isinstance(layer, ConvLayer):
        modules: list[nn.Module] = [
            nn.Conv2d(
                in_shape[0],
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                bias=not layer.batch_norm,
            )
        ]
        if layer.batch_norm:
            modules.append(nn.BatchNorm2d(layer.out_channels))
        modules += _activation(layer.activation)
        dropout = model_dropout if layer.dropout is None else layer.dropout
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        return modules
    if isinstance(layer, MaxPoolLayer):
        return [nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)]
    if isinstance(layer, AvgPoolLayer):
        return [nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)]
    if isinstance(layer, GlobalAvgPoolLayer):
        return [SpatialMean()] if deterministic else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if isinstance(layer, FlattenLayer):
        return [nn.Flatten()]
    if isinstance(layer, LinearLayer):
        flatten: list[nn.Module] = [nn.Flatten()] if len(in_shape) > 1 else []
        modules = [*flatten, nn.Linear(prod(in_shape), layer.out_features)]
        modules += _activation(layer.activation)
        if layer.dropout > 0:
            modules.append(nn.Dropout(layer.dropout))
        return modules
    if isinstance(layer, DropoutLayer):
        return [nn.Dropout(layer.p)]
    raise TypeError(f"no builder for layer type {layer.type!r}")


def build_model(
    layers: list[Layer], model_dropout: float = 0.0, *, deterministic: bool = False
) -> nn.Sequential:
    """One nn.Sequential per spec layer, so module i of the result is spec layer i; with
    `deterministic`, of modules that train under deterministic algorithms."""
    analysis = analyze(layers)
    in_shapes = [[1, 28, 28]] + [row.output_shape for row in analysis.layers[:-1]]
    return nn.Sequential(
        *(
            nn.Sequential(*_block(layer, in_shape, model_dropout, deterministic))
            for layer, in_shape in zip(layers, in_shapes, strict=True)
        )
    )


def build_for_training(spec: JobSpec, device: torch.device) -> nn.Sequential:
    """The spec's model on the device, in channels_last, the layout oneDNN's and cuDNN's
    convolution kernels are fastest with (about 5-10% on a CPU here)."""
    if not spec.model.layers:
        # The stored spec always carries its layers (a preset is resolved when the job is
        # submitted); without them there is nothing to train, and no default to guess.
        raise ValueError("the spec's model has no layers, so there is no network to train")
    layers, dropout = spec.model.layers, spec.model.dropout
    model = build_model(layers, dropout, deterministic=spec.deterministic).to(device)
    return model.to(memory_format=torch.channels_last)
