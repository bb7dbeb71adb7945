"""Rules a job spec must meet beyond its field types: cross-field rules, the
architecture, and the service's limits. Each problem names the field to change."""

from dataclasses import dataclass

from shared.analysis import Analysis, ArchitectureError, analyze
from shared.layers import ConvLayer, Layer, LinearLayer
from shared.presets import DEFAULT_PRESET, PRESETS
from shared.settings import Settings
from shared.spec import MNIST_CLASSES, MNIST_TRAIN_IMAGES, JobSpec, ModelSpec, MultiStepSchedule


@dataclass(frozen=True)
class Problem:
    # A path into the request body, as a tuple of keys and list indexes.
    location: tuple[str | int, ...]
    message: str
    code: str = "value_error"


class SpecRejected(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def _schedule_problems(spec: JobSpec) -> list[Problem]:
    problems = []
    steps = spec.batch_size_schedule or []
    if steps and steps[0].epoch != 0:
        problems.append(
            Problem(
                ("batch_size_schedule", 0, "epoch"),
                "must be 0: the first entry sets the batch size from the first epoch on",
            )
        )
    for index, (before, after) in enumerate(zip(steps, steps[1:], strict=False), start=1):
        if after.epoch <= before.epoch:
            problems.append(
                Problem(
                    ("batch_size_schedule", index, "epoch"),
                    f"must be above {before.epoch}: epochs strictly increase",
                )
            )
    if steps and steps[-1].epoch >= spec.epochs:
        problems.append(
            Problem(
                ("batch_size_schedule", len(steps) - 1, "epoch"),
                f"must be below epochs ({spec.epochs}); epochs count from 0",
            )
        )
    schedule = spec.schedule
    if isinstance(schedule, MultiStepSchedule) and schedule.milestones[-1] >= spec.epochs:
        problems.append(
            Problem(
                ("schedule", "milestones"), f"every milestone must be below epochs ({spec.epochs})"
            )
        )
    if schedule.warmup_epochs and schedule.warmup_epochs >= spec.epochs:
        problems.append(
            Problem(("schedule", "warmup_epochs"), f"must be below epochs ({spec.epochs})")
        )
    return problems


def _data_problems(spec: JobSpec) -> list[Problem]:
    data = spec.data
    left = MNIST_TRAIN_IMAGES - data.validation
    if data.train_subset is not None and data.train_subset > left:
        return [
            Problem(
                ("data", "train_subset"),
                f"at most {left}: data.validation holds {data.validation} of the "
                f"{MNIST_TRAIN_IMAGES} training images out, and the subset is taken from the rest",
            )
        ]
    return []


def _limit_problems(spec: JobSpec, settings: Settings) -> list[Problem]:
    problems = []
    if spec.epochs > settings.max_epochs:
        problems.append(Problem(("epochs",), f"at most {settings.max_epochs}", "limit"))
    batch_sizes = [
        ("batch_size",),
        *[
            ("batch_size_schedule", i, "batch_size")
            for i in range(len(spec.batch_size_schedule or []))
        ],
    ]
    values = [spec.batch_size, *[s.batch_size for s in spec.batch_size_schedule or []]]
    for location, value in zip(batch_sizes, values, strict=True):
        if value > settings.max_batch_size:
            problems.append(Problem(location, f"at most {settings.max_batch_size}", "limit"))
    layers = spec.model.layers or []
    if len(layers) > settings.max_layers:
        problems.append(
            Problem(("model", "layers"), f"at most {settings.max_layers} layers", "limit")
        )
    for index, layer in enumerate(layers):
        width = (
            layer.out_channels
            if isinstance(layer, ConvLayer)
            else (layer.out_features if isinstance(layer, LinearLayer) else 0)
        )
        if width > settings.max_channels:
            field = "out_channels" if isinstance(layer, ConvLayer) else "out_features"
            problems.append(
                Problem(
                    ("model", "layers", index, field), f"at most {settings.max_channels}", "limit"
                )
            )
    return problems


def _architecture_problems(analysis: Analysis, settings: Settings) -> list[Problem]:
    problems = []
    if analysis.output_shape != [MNIST_CLASSES]:
        problems.append(
            Problem(
                ("model", "layers"),
                f"the network must end in {MNIST_CLASSES} "
                f"outputs, not {analysis.output_shape}: finish with gap or "
                "flatten and a linear layer of 10, or a 10-channel conv and gap",
            )
        )
    if analysis.parameters > settings.max_parameters:
        problems.append(
            Problem(
                ("model",),
                f"{analysis.parameters} parameters; at most {settings.max_parameters}",
                "limit",
            )
        )
    if analysis.multiply_adds > settings.max_multiply_adds:
        problems.append(
            Problem(
                ("model",),
                f"{analysis.multiply_adds} multiply-adds per image; "
                f"at most {settings.max_multiply_adds}",
                "limit",
            )
        )
    return problems


def resolve_model(model: ModelSpec) -> ModelSpec:
    """A submitted model as it is stored: the layers it trains, its preset name as a label.

    Resolved once, at submission; what is stored is never resolved again.
    """
    if model.preset is None and model.layers is not None:
        return model
    name = model.preset or DEFAULT_PRESET
    preset = PRESETS.get(name)
    if preset is None:
        raise SpecRejected(
            [Problem(("model", "preset"), f"unknown preset {name!r}; one of: {', '.join(PRESETS)}")]
        )
    layers = list(preset.layers)
    if model.layers is not None and model.layers != layers:
        raise SpecRejected([Problem(("model",), "give either `preset` or `layers`, not both")])
    return model.model_copy(update={"preset": name, "layers": layers})


def check_model(spec_layers: list[Layer], settings: Settings) -> Analysis:
    """Analyse layers, raising SpecRejected with the layer named if they cannot be built."""
    try:
        analysis = analyze(spec_layers)
    except ArchitectureError as error:
        location: tuple[str | int, ...] = ("model", "layers")
        if error.layer is not None:
            location = (*location, error.layer)
        raise SpecRejected([Problem(location, error.message)]) from error
    problems = _architecture_problems(analysis, settings)
    if problems:
        raise SpecRejected(problems)
    return analysis


# A training step costs about three forward passes: the forward pass itself, and a
# backward pass that computes gradients for both the activations and the weights.
TRAINING_PASSES = 3


def estimated_multiply_adds(spec: JobSpec, analysis: Analysis) -> int:
    """What a whole job costs, in multiply-adds."""
    if spec.kind == "lr_range_test":
        images = spec.lr_range_test.steps * spec.batch_size_for_epoch(0)
        return analysis.multiply_adds * TRAINING_PASSES * images
    # Training passes over the images trained on, one forward pass over those validated on.
    data = spec.data
    per_epoch = data.train_images() * TRAINING_PASSES + data.validation + spec.test_images()
    return analysis.multiply_adds * per_epoch * spec.epochs


def _compute_problems(spec: JobSpec, analysis: Analysis, settings: Settings) -> list[Problem]:
    needed = estimated_multiply_adds(spec, analysis)
    if needed <= settings.max_job_multiply_adds:
        return []
    return [
        Problem(
            ("epochs",),
            f"this job needs about {needed:.2e} multiply-adds "
            f"({analysis.multiply_adds} per image, over every image of every epoch); at most "
            f"{settings.max_job_multiply_adds:.2e}: train fewer epochs, on data.train_subset, "
            "or a smaller model",
            "limit",
        )
    ]


def check_spec(spec: JobSpec, settings: Settings) -> Analysis:
    """Every rule at once, so one answer lists everything to fix; returns the analysis.

    `spec` is resolved (its model has layers): see `admit`.
    """
    if spec.model.layers is None:
        raise SpecRejected([Problem(("model", "layers"), "a stored spec carries its layers")])
    problems = _schedule_problems(spec) + _data_problems(spec) + _limit_problems(spec, settings)
    try:
        analysis = check_model(spec.model.layers, settings)
    except SpecRejected as rejected:
        problems += rejected.problems
        raise SpecRejected(problems) from rejected
    problems += _compute_problems(spec, analysis, settings)
    if problems:
        raise SpecRejected(problems)
    return analysis


def admit(spec: JobSpec, settings: Settings) -> tuple[JobSpec, Analysis]:
    """A submitted spec as it will be stored, with its analysis, or SpecRejected."""
    resolved = spec.model_copy(update={"model": resolve_model(spec.model)})
    return resolved, check_spec(resolved, settings)
