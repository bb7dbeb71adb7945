import pytest
from pydantic import TypeAdapter

from shared.analysis import analyze
from shared.layers import Layer
from shared.presets import PRESETS

LAYERS = TypeAdapter(list[Layer])


def conv(out_channels: int, kernel_size: int = 3, **extra: object) -> dict:
    return {"type": "conv", "out_channels": out_channels, "kernel_size": kernel_size, **extra}


SCORES = [conv(10, activation="none"), {"type": "gap"}]
# Four 3x3 convs, a pool at receptive field 9, four more: a model no rule objects to.
SOUND = [
    conv(8),
    conv(8),
    conv(16),
    conv(16),
    {"type": "maxpool"},
    conv(8, 1),
    conv(16),
    conv(16),
    conv(16),
    *SCORES,
]


def advice_codes(layers: list[dict]) -> list[tuple[int | None, str]]:
    return [(a.layer, a.code) for a in analyze(LAYERS.validate_python(layers)).advice]


class TestAdvice:
    def test_a_sound_model_gets_none(self):
        assert advice_codes(SOUND) == []

    @pytest.mark.parametrize("name", sorted(PRESETS))
    def test_presets_follow_their_own_advice(self, name):
        assert analyze(PRESETS[name].layers).advice == []

    def test_pooling_raw_pixels_is_early(self):
        layers = [conv(8), {"type": "maxpool"}, *[conv(16)] * 5, *SCORES]
        assert (1, "early_pooling") in advice_codes(layers)

    def test_pooling_at_five_by_five_is_not_early(self):
        layers = [conv(8), conv(8), {"type": "maxpool"}, conv(8, 1), *[conv(16)] * 3, *SCORES]
        assert advice_codes(layers) == []

    def test_pooling_next_to_the_output(self):
        layers = [*[conv(16)] * 7, {"type": "maxpool"}, conv(16), *SCORES]
        assert (7, "pooling_near_output") in advice_codes(layers)

    def test_a_widening_one_by_one(self):
        layers = [*SOUND[:5], conv(32, 1), *SOUND[6:]]
        assert (5, "widening_1x1") in advice_codes(layers)

    def test_a_receptive_field_smaller_than_the_digit(self):
        layers = [conv(8), conv(16), *SCORES]
        assert (3, "small_receptive_field") in advice_codes(layers)

    def test_dropout_on_the_output(self):
        layers = [*SOUND, {"type": "dropout", "p": 0.1}]
        assert (len(layers) - 1, "dropout_on_output") in advice_codes(layers)

    def test_an_activation_on_the_class_scores(self):
        layers = [*SOUND[:-2], conv(10), {"type": "gap"}]
        assert (len(layers) - 2, "activation_on_output") in advice_codes(layers)
