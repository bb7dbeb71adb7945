"""Named model presets, listed at GET /v1/presets."""

from dataclasses import dataclass, field

from shared.layers import LAYER_LIST, Layer


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    raw_layers: tuple[dict[str, object], ...]
    # The rest of a job spec that trains this model well (merged under `model`).
    recipe: tuple[tuple[str, object], ...] = ()
    # Validated once, when the preset is made at import: a broken table fails at start-up.
    layers: tuple[Layer, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(LAYER_LIST.validate_python(self.raw_layers)))

    def job(self) -> dict[str, object]:
        """A complete job body: the recipe with this preset as its model."""
        body = dict(self.recipe)
        model = dict(body.pop("model", {}))  # type: ignore[call-overload]
        return {**body, "model": {**model, "preset": self.name}}


# The model of a spec that names neither a preset nor layers.
DEFAULT_PRESET = "baseline"


def _scores() -> dict[str, object]:
    # The class scores: no batch norm and no activation before the softmax.
    return {"type": "conv", "out_channels": 10, "kernel_size": 3, "activation": "none"}


# Fifteen epochs of one-cycle SGD with small random rotations: the recipe of the compact
# presets, measured in docs/presets.md.
COMPACT_RECIPE: tuple[tuple[str, object], ...] = (
    ("epochs", 15),
    ("batch_size", 128),
    ("seed", 1),
    ("optimizer", {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
    ("schedule", {"name": "onecycle", "max_lr": 0.1, "pct_start": 0.25}),
    ("data", {"normalize": True, "augment": {"rotation_degrees": 7.0}}),
)


def _ten_epochs(
    max_lr: float, pct_start: float, batch_size: int, dropout: float, rotation: float
) -> tuple[tuple[str, object], ...]:
    """Ten epochs of one-cycle SGD: a recipe a study chose on validation and refit confirmed
    on test over five seeds (`make bench-quality`; docs/presets.md), its values rounded to
    four significant figures."""
    return (
        ("epochs", 10),
        ("batch_size", batch_size),
        ("seed", 1),
        ("model", {"dropout": dropout}),
        ("optimizer", {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
        ("schedule", {"name": "onecycle", "max_lr": max_lr, "pct_start": pct_start}),
        ("data", {"normalize": True, "augment": {"rotation_degrees": rotation}}),
    )


def _compact(
    name: str,
    description: str,
    widths: tuple[int, ...],
    recipe: tuple[tuple[str, object], ...] = COMPACT_RECIPE,
) -> Preset:
    """conv, conv, pool at RF 5, 1x1, three convs, scores, gap: the notes' classic shape."""
    first, second, squeeze, third, fourth, fifth = widths
    return Preset(
        name=name,
        description=description,
        raw_layers=(
            _conv(first),
            _conv(second),
            {"type": "maxpool", "kernel_size": 2},
            _conv(squeeze, kernel_size=1),
            _conv(third),
            _conv(fourth),
            _conv(fifth),
            _scores(),
            {"type": "gap"},
        ),
        recipe=recipe,
    )


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
                _scores(),
                {"type": "gap"},
            ),
        ),
        _compact(
            "compact-20k",
            "Under 20k parameters, aimed at 99.4% within 15 epochs.",
            (12, 24, 12, 20, 24, 24),
        ),
        _compact(
            "compact-10k",
            "Under 10k parameters, aimed at 99.4% within 15 epochs.",
            (10, 16, 10, 16, 16, 16),
        ),
        _compact(
            "compact-8k",
            "Under 8k parameters: 99.43 ± 0.05% test accuracy after 10 epochs over five "
            "seeds, chosen by a study on validation and refit on all 60,000 images.",
            (8, 19, 8, 15, 18, 10),
            _ten_epochs(
                max_lr=0.2648, pct_start=0.3952, batch_size=128, dropout=0.01004, rotation=3.871
            ),
        ),
        _compact(
            "compact-6k",
            "Under 6k parameters (4,576): 99.34 ± 0.05% test accuracy after 10 epochs over "
            "five seeds, chosen by a study on validation and refit on all 60,000 images.",
            (4, 10, 8, 13, 8, 13),
            _ten_epochs(
                max_lr=0.3763, pct_start=0.1206, batch_size=256, dropout=0.04206, rotation=0.1028
            ),
        ),
    ]
}
