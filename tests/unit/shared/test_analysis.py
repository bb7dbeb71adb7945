import random
from typing import Any

import pytest
import torch
from pydantic import TypeAdapter
from torch import nn

from shared.analysis import Analysis, ArchitectureError, analyze
from shared.layers import Layer
from worker.training.model import build_model

LAYERS = TypeAdapter(list[Layer])


def layers_of(*raw: dict[str, Any]) -> list[Layer]:
    return LAYERS.validate_python(list(raw))


def conv(out_channels: int, kernel_size: int = 3, **fields: Any) -> dict[str, Any]:
    return {"type": "conv", "out_channels": out_channels, "kernel_size": kernel_size, **fields}


def linear(out_features: int = 10) -> dict[str, Any]:
    return {"type": "linear", "out_features": out_features}


def column(analysis: Analysis, name: str) -> list[Any]:
    return [getattr(row, name) for row in analysis.layers]


class TestAnalyzeSmallModel:
    """conv 3x3 with batch norm, 2x2 max-pool, padded conv 3x3, gap, linear 10.

    Worked by hand: 28 -> 26 -> 13 -> 13 -> 1; the receptive field grows by
    (k - 1) * jump at each window, and gap covers the whole 13x13 map at jump 2.
    """

    @pytest.fixture
    def analysis(self) -> Analysis:
        return analyze(
            layers_of(
                conv(4, batch_norm=True),
                {"type": "maxpool", "kernel_size": 2},
                conv(8, padding=1),
                {"type": "gap"},
                linear(),
            )
        )

    def test_output_shapes(self, analysis):
        assert column(analysis, "output_shape") == [
            [4, 26, 26],
            [4, 13, 13],
            [8, 13, 13],
            [8],
            [10],
        ]
        assert analysis.output_shape == [10]

    def test_receptive_fields_and_jumps(self, analysis):
        assert column(analysis, "receptive_field") == [3, 4, 8, 32, 32]
        assert column(analysis, "jump") == [1, 2, 2, 2, 2]
        assert analysis.receptive_field == 32

    def test_parameters(self, analysis):
        # 3*3*1*4 weights and batch norm's scale and shift per channel, no conv bias;
        # 3*3*4*8 weights and 8 biases; 8*10 weights and 10 biases.
        assert column(analysis, "parameters") == [36 + 2 * 4, 0, 288 + 8, 0, 80 + 10]
        assert analysis.parameters == 430

    def test_multiply_adds(self, analysis):
        assert column(analysis, "multiply_adds") == [36 * 26 * 26, 0, 288 * 13 * 13, 0, 80]
        assert analysis.multiply_adds == 24336 + 48672 + 80

    def test_rows_are_indexed_and_typed_like_the_spec(self, analysis):
        assert column(analysis, "index") == [0, 1, 2, 3, 4]
        assert column(analysis, "type") == ["conv", "maxpool", "conv", "gap", "linear"]

    def test_summary_and_dict_agree_with_the_totals(self, analysis):
        assert analysis.summary() == {
            "parameters": 430,
            "receptive_field": 32,
            "multiply_adds": 73088,
        }
        assert analysis.to_dict()["layers"][0]["output_shape"] == [4, 26, 26]


class TestAnalyzeStridedModel:
    """A 5x5 conv at stride 2 with padding 2, dropout, flatten, linear 10: 28 -> 14."""

    @pytest.fixture
    def analysis(self) -> Analysis:
        return analyze(
            layers_of(
                conv(6, kernel_size=5, stride=2, padding=2),
                {"type": "dropout", "p": 0.3},
                {"type": "flatten"},
                linear(),
            )
        )

    def test_output_shapes(self, analysis):
        assert column(analysis, "output_shape") == [[6, 14, 14], [6, 14, 14], [1176], [10]]

    def test_receptive_fields_and_jumps(self, analysis):
        # Flatten sees the whole 14x14 map: 5 + 13 * 2.
        assert column(analysis, "receptive_field") == [5, 5, 31, 31]
        assert column(analysis, "jump") == [2, 2, 2, 2]

    def test_parameters_and_multiply_adds(self, analysis):
        assert column(analysis, "parameters") == [150 + 6, 0, 0, 11760 + 10]
        assert column(analysis, "multiply_adds") == [150 * 14 * 14, 0, 0, 11760]


class TestAnalyzeRejects:
    def test_a_window_larger_than_its_input_names_the_layer(self):
        layers = layers_of(conv(4, kernel_size=27), {"type": "maxpool", "kernel_size": 4})
        with pytest.raises(ArchitectureError) as caught:
            analyze(layers)
        assert caught.value.layer == 1

    def test_a_conv_after_gap_names_the_layer(self):
        with pytest.raises(ArchitectureError) as caught:
            analyze(layers_of(conv(4), {"type": "gap"}, conv(4)))
        assert caught.value.layer == 2

    def test_pooling_padded_past_half_its_window(self):
        with pytest.raises(ArchitectureError) as caught:
            analyze(layers_of({"type": "avgpool", "kernel_size": 2, "padding": 2}))
        assert caught.value.layer == 0


ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "tanh", "none")


def random_window_layer(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.7:
        kernel = rng.choice((1, 3, 5))
        return conv(
            rng.randint(1, 8),
            kernel_size=kernel,
            stride=rng.choice((1, 2)),
            padding=rng.randint(0, kernel // 2),
            batch_norm=rng.random() < 0.5,
            activation=rng.choice(ACTIVATIONS),
        )
    kernel = rng.choice((2, 3))
    return {
        "type": rng.choice(("maxpool", "avgpool")),
        "kernel_size": kernel,
        "stride": rng.choice((None, 1, 2)),
        "padding": rng.randint(0, kernel // 2),
    }


def random_architecture(rng: random.Random) -> list[dict[str, Any]]:
    body = [random_window_layer(rng) for _ in range(rng.randint(1, 5))]
    if rng.random() < 0.2:
        body.insert(rng.randrange(len(body) + 1), {"type": "dropout", "p": 0.1})
    return [*body, {"type": rng.choice(("gap", "flatten"))}, linear()]


def valid_architectures(seed: int, count: int) -> list[list[Layer]]:
    """`count` random architectures that analyze accepts and that end in ten outputs."""
    rng = random.Random(seed)
    found: list[list[Layer]] = []
    for _ in range(50 * count):
        layers = layers_of(*random_architecture(rng))
        try:
            if analyze(layers).output_shape == [10]:
                found.append(layers)
        except ArchitectureError:
            continue
        if len(found) == count:
            return found
    raise AssertionError(f"seed {seed} gave only {len(found)} valid architectures")


def conv_multiply_adds(conv_module: nn.Conv2d, output: torch.Tensor) -> int:
    kernel_h, kernel_w = conv_module.kernel_size
    out_h, out_w = output.shape[2:]
    return kernel_h * kernel_w * conv_module.in_channels * conv_module.out_channels * out_h * out_w


SEEDS = (11, 23, 37, 41)
ARCHITECTURES_PER_SEED = 60


# Hundreds of tiny forward passes: a second thread only adds synchronisation.
@pytest.mark.usefixtures("one_torch_thread")
class TestAnalyzeAgreesWithTorch:
    @pytest.mark.parametrize("seed", SEEDS)
    def test_random_architectures_cover_every_window_layer(self, seed):
        types = {
            (layer.type, getattr(layer, "batch_norm", None))
            for layers in valid_architectures(seed, ARCHITECTURES_PER_SEED)
            for layer in layers
        }
        assert {
            ("conv", True),
            ("conv", False),
            ("maxpool", None),
            ("avgpool", None),
            ("gap", None),
            ("flatten", None),
        } <= types

    @pytest.mark.parametrize("seed", SEEDS)
    def test_shapes_parameters_and_conv_multiply_adds(self, seed):
        for layers in valid_architectures(seed, ARCHITECTURES_PER_SEED):
            described = [layer.model_dump(exclude_defaults=True) for layer in layers]
            analysis = analyze(layers)
            model = build_model(layers).eval()
            assert len(model) == len(layers), described

            features = torch.zeros(2, 1, 28, 28)
            with torch.no_grad():
                for index, block in enumerate(model):
                    conv_cost = 0
                    for module in block:
                        features = module(features)
                        if isinstance(module, nn.Conv2d):
                            conv_cost += conv_multiply_adds(module, features)
                    row = analysis.layers[index]
                    assert list(features.shape[1:]) == row.output_shape, (index, described)
                    if layers[index].type == "conv":
                        assert conv_cost == row.multiply_adds, (index, described)

            torch_parameters = sum(parameter.numel() for parameter in model.parameters())
            assert torch_parameters == analysis.parameters, described
