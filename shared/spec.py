"""The job spec: the body of POST /v1/jobs, with a sensible default for every field.

Layers, optimizers and schedules are discriminated unions keyed by `type` or
`name`: supporting another one means adding a model class to its union here and
a builder for it in the worker, nothing else.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MNIST_CLASSES = 10
MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000


# Printable text only: control characters (NUL above all) have no place in a name, and
# PostgreSQL refuses to store a NUL.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class StrictModel(BaseModel):
    # Unknown fields are an error, so a typo never silently trains the wrong thing; JSON's
    # Infinity and NaN are refused, since no hyperparameter means them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Activation = Literal["relu", "leaky_relu", "gelu", "silu", "tanh", "none"]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class ConvLayer(StrictModel):
    type: Literal["conv"]
    out_channels: int = Field(ge=1)
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
    out_features: int = Field(ge=1)
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


class ModelSpec(StrictModel):
    """Either a named preset or explicit layers; with neither, the `baseline` preset."""

    preset: str | None = None
    layers: list[Layer] | None = Field(default=None, min_length=1)
    # The dropout of every conv layer that does not set its own.
    dropout: Probability = 0.0

    @model_validator(mode="after")
    def _resolve_preset(self) -> "ModelSpec":
        from shared.presets import PRESETS

        if self.preset is None and self.layers is None:
            self.preset = "baseline"
        if self.preset is None:
            return self
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; one of: {', '.join(PRESETS)}")
        preset_layers = PRESETS[self.preset].layers
        if self.layers is not None and self.layers != preset_layers:
            raise ValueError("give either `preset` or `layers`, not both")
        # The stored spec carries the layers it trains, so it reads on its own.
        self.layers = preset_layers
        return self


class AugmentSpec(StrictModel):
    rotation_degrees: float = Field(default=0.0, ge=0.0, le=180.0)
    translate: float = Field(default=0.0, ge=0.0, le=0.5)


class DataSpec(StrictModel):
    normalize: bool = True
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    train_subset: int | None = Field(default=None, ge=1, le=MNIST_TRAIN_IMAGES)
    test_subset: int | None = Field(default=None, ge=1, le=MNIST_TEST_IMAGES)


LearningRate = Annotated[float, Field(gt=0.0, le=10.0)]
WeightDecay = Annotated[float, Field(default=0.0, ge=0.0, le=1.0)]


class SGDSpec(StrictModel):
    name: Literal["sgd"]
    lr: LearningRate = 0.05
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: WeightDecay = 0.0

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SGDSpec":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0")
        return self


class AdamSpec(StrictModel):
    name: Literal["adam"]
    lr: LearningRate = 0.001
    betas: tuple[
        Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]
    ] = (
        0.9,
        0.999,
    )
    eps: float = Field(default=1e-8, gt=0.0, le=1.0)
    weight_decay: WeightDecay = 0.0


class AdamWSpec(AdamSpec):
    name: Literal["adamw"]  # type: ignore[assignment]
    weight_decay: WeightDecay = 0.01


class RMSpropSpec(StrictModel):
    name: Literal["rmsprop"]
    lr: LearningRate = 0.001
    alpha: float = Field(default=0.99, gt=0.0, lt=1.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-8, gt=0.0, le=1.0)
    weight_decay: WeightDecay = 0.0


Optimizer = Annotated[
    SGDSpec | AdamSpec | AdamWSpec | RMSpropSpec,
    Field(discriminator="name"),
]


class ScheduleBase(StrictModel):
    # Linear warm-up from lr/10 over these epochs before the schedule proper.
    warmup_epochs: int = Field(default=0, ge=0)


class ConstantSchedule(ScheduleBase):
    name: Literal["constant"]


class StepSchedule(ScheduleBase):
    name: Literal["step"]
    step_size: int = Field(default=1, ge=1)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)


class MultiStepSchedule(ScheduleBase):
    name: Literal["multistep"]
    milestones: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _increasing(self) -> "MultiStepSchedule":
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError("milestones must be strictly increasing")
        return self


class ExponentialSchedule(ScheduleBase):
    name: Literal["exponential"]
    gamma: float = Field(default=0.9, gt=0.0, le=1.0)


class CosineSchedule(ScheduleBase):
    name: Literal["cosine"]
    eta_min: float = Field(default=0.0, ge=0.0)


class CyclicSchedule(ScheduleBase):
    name: Literal["cyclic"]
    base_lr: LearningRate = 0.001
    max_lr: LearningRate = 0.1
    # Half a cycle in optimizer steps, or a whole cycle in epochs; one of the two.
    step_size_up: int | None = Field(default=None, ge=1)
    cycle_epochs: float | None = Field(default=None, gt=0.0)
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: float = Field(default=1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> "CyclicSchedule":
        if self.base_lr >= self.max_lr:
            raise ValueError("base_lr must be below max_lr")
        if self.step_size_up is not None and self.cycle_epochs is not None:
            raise ValueError("give step_size_up or cycle_epochs, not both")
        if self.step_size_up is None and self.cycle_epochs is None:
            self.cycle_epochs = 2.0
        return self

    # Cycle SGD's momentum inversely to the lr (torch's policy); off keeps `momentum` as given.
    cycle_momentum: bool = False


class OneCycleSchedule(ScheduleBase):
    name: Literal["onecycle"]
    # None takes optimizer.lr as the peak.
    max_lr: LearningRate | None = None
    pct_start: float = Field(default=0.3, gt=0.0, lt=1.0)
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: float = Field(default=25.0, ge=1.0)
    final_div_factor: float = Field(default=1e4, ge=1.0)
    three_phase: bool = False
    # Cycle SGD's momentum inversely to the lr (torch's policy); off keeps `momentum` as given.
    cycle_momentum: bool = False


class PlateauSchedule(ScheduleBase):
    name: Literal["plateau"]
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    patience: int = Field(default=2, ge=0)
    threshold: float = Field(default=1e-4, ge=0.0)
    min_lr: float = Field(default=0.0, ge=0.0)


Schedule = Annotated[
    ConstantSchedule
    | StepSchedule
    | MultiStepSchedule
    | ExponentialSchedule
    | CosineSchedule
    | CyclicSchedule
    | OneCycleSchedule
    | PlateauSchedule,
    Field(discriminator="name"),
]

# Schedules that move the lr every optimizer step rather than every epoch.
BATCHWISE_SCHEDULES = frozenset({"cyclic", "onecycle"})


class BatchSizeStep(StrictModel):
    epoch: int = Field(ge=0)
    batch_size: int = Field(ge=1)


class LrRangeTestSpec(StrictModel):
    """The lr grows exponentially from start_lr to end_lr over `steps` batches, while the loss
    is recorded; the run stops early once the loss blows up."""

    start_lr: float = Field(default=1e-5, gt=0.0, le=10.0)
    end_lr: float = Field(default=1.0, gt=0.0, le=10.0)
    steps: int = Field(default=300, ge=10, le=5000)
    # Exponential smoothing of the loss, and the multiple of the best loss that ends the test.
    smoothing: float = Field(default=0.95, ge=0.0, lt=1.0)
    divergence_factor: float = Field(default=4.0, gt=1.0)

    @model_validator(mode="after")
    def _increasing(self) -> "LrRangeTestSpec":
        if self.start_lr >= self.end_lr:
            raise ValueError("start_lr must be below end_lr")
        return self


class JobSpec(StrictModel):
    name: str | None = Field(default=None, max_length=200, pattern=PRINTABLE)
    # "lr_range_test" trains no epochs: it sweeps the lr and suggests one (see `lr_range_test`).
    kind: Literal["train", "lr_range_test"] = "train"
    lr_range_test: LrRangeTestSpec = Field(default_factory=LrRangeTestSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    optimizer: Optimizer = Field(default_factory=lambda: SGDSpec(name="sgd"))
    # One-cycle by default: the baseline reaches ~98.9% on MNIST in a single epoch with it.
    schedule: Schedule = Field(default_factory=lambda: OneCycleSchedule(name="onecycle"))
    batch_size: int = Field(default=128, ge=1)
    # The batch size from each listed epoch on; it must start at epoch 0.
    batch_size_schedule: list[BatchSizeStep] | None = Field(default=None, min_length=1)
    epochs: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)

    def batch_size_for_epoch(self, epoch: int) -> int:
        if self.batch_size_schedule is None:
            return self.batch_size
        current = self.batch_size_schedule[0].batch_size
        for step in self.batch_size_schedule:
            if step.epoch <= epoch:
                current = step.batch_size
        return current

    def train_images(self) -> int:
        return self.data.train_subset or MNIST_TRAIN_IMAGES

    def test_images(self) -> int:
        return self.data.test_subset or MNIST_TEST_IMAGES
