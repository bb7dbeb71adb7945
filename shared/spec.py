"""The job spec: the body of POST /v1/jobs, with a sensible default for every field.

Optimizers and schedules are discriminated unions keyed by `name`, layers (shared.layers)
by `type`: supporting another one means adding a model class to its union and a builder
for it in the worker, nothing else.
"""

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from shared.layers import MAX_INT32, Layer, Probability
from shared.strict import PRINTABLE, StrictModel

MNIST_CLASSES = 10
MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000


class ModelSpec(StrictModel):
    """A named preset or explicit layers.

    As submitted, give one of the two (neither means the `baseline` preset); the API
    resolves a preset into its layers before it stores the job. As stored with a job, the
    layers are what trains and `preset` is only a label: a stored spec is never resolved
    against today's presets again, so editing or removing a preset never breaks a job.
    """

    preset: str | None = Field(default=None, max_length=100, pattern=PRINTABLE)
    layers: list[Layer] | None = Field(default=None, min_length=1)
    # The dropout of every conv layer that does not set its own.
    dropout: Probability = 0.0


class AugmentSpec(StrictModel):
    rotation_degrees: float = Field(default=0.0, ge=0.0, le=180.0)
    translate: float = Field(default=0.0, ge=0.0, le=0.5)


class DataSpec(StrictModel):
    normalize: bool = True
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    train_subset: int | None = Field(default=None, ge=1, le=MNIST_TRAIN_IMAGES)
    test_subset: int | None = Field(default=None, ge=1, le=MNIST_TEST_IMAGES)
    # Training images held out to validate on, the same share of each digit as near as it
    # can be, chosen by `validation_seed` alone (never by the job's `seed`, so jobs of other
    # seeds validate on the same images). The job trains on the rest, in their file order;
    # `train_subset` then takes the first N of those (shared.checks refuses a subset larger
    # than what is left). Two always stay to train on: a batch of one is never trained.
    validation: int = Field(default=0, ge=0, le=MNIST_TRAIN_IMAGES - 2)
    validation_seed: int = Field(default=0, ge=0, le=2**31 - 1)

    def train_images(self) -> int:
        """How many images the job trains on: what `validation` leaves, or the subset."""
        return self.train_subset or MNIST_TRAIN_IMAGES - self.validation


# A label to find jobs by (`GET /v1/jobs?tag=`): short, no spaces, no punctuation that
# would need quoting in a URL or a shell.
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
MAX_TAGS = 16

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
    warmup_epochs: int = Field(default=0, ge=0, le=MAX_INT32)


class ConstantSchedule(ScheduleBase):
    name: Literal["constant"]


class StepSchedule(ScheduleBase):
    name: Literal["step"]
    step_size: int = Field(default=1, ge=1, le=MAX_INT32)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)


class MultiStepSchedule(ScheduleBase):
    name: Literal["multistep"]
    milestones: list[Annotated[int, Field(ge=1, le=MAX_INT32)]] = Field(min_length=1)
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
    step_size_up: int | None = Field(default=None, ge=1, le=MAX_INT32)
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
    patience: int = Field(default=2, ge=0, le=MAX_INT32)
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
    epoch: int = Field(ge=0, le=MAX_INT32)
    batch_size: int = Field(ge=1, le=MAX_INT32)


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
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    # "lr_range_test" trains no epochs: it sweeps the lr and suggests one (see `lr_range_test`).
    kind: Literal["train", "lr_range_test"] = "train"
    lr_range_test: LrRangeTestSpec = Field(default_factory=LrRangeTestSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    optimizer: Optimizer = Field(default_factory=lambda: SGDSpec(name="sgd"))
    # One-cycle by default: the baseline reaches ~98.9% on MNIST in a single epoch with it.
    schedule: Schedule = Field(default_factory=lambda: OneCycleSchedule(name="onecycle"))
    batch_size: int = Field(default=128, ge=1, le=MAX_INT32)
    # The batch size from each listed epoch on; it must start at epoch 0.
    batch_size_schedule: list[BatchSizeStep] | None = Field(default=None, min_length=1)
    epochs: int = Field(default=1, ge=1, le=MAX_INT32)
    seed: int = Field(default=0, ge=0, le=MAX_INT32)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Deterministic algorithms only (slower on CUDA): the same spec and seed on the same
    # kind of device and software then give the same metrics.
    deterministic: bool = False

    @field_validator("tags")
    @classmethod
    def _distinct_tags(cls, tags: list[str]) -> list[str]:
        # Stored as a set (one row per tag); a repeat would only be dropped silently.
        if len(set(tags)) != len(tags):
            raise ValueError("tags must not repeat")
        return tags

    def batch_size_for_epoch(self, epoch: int) -> int:
        if self.batch_size_schedule is None:
            return self.batch_size
        current = self.batch_size_schedule[0].batch_size
        for step in self.batch_size_schedule:
            if step.epoch <= epoch:
                current = step.batch_size
        return current

    def train_images(self) -> int:
        return self.data.train_images()

    def test_images(self) -> int:
        return self.data.test_subset or MNIST_TEST_IMAGES
