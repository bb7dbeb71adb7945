"""Learning-rate schedules from the spec's `schedule` object.

Epoch-wise schedules step once per epoch, batch-wise ones (cyclic, onecycle)
once per optimizer step, as torch intends each to be used. A warm-up, when
asked for, ramps linearly from lr/10 over its epochs, step by step, before the
schedule proper takes over.
"""

from typing import Any

from torch.optim import Optimizer, lr_scheduler

from shared.spec import BATCHWISE_SCHEDULES, CyclicSchedule, JobSpec, OneCycleSchedule

WARMUP_START_FACTOR = 0.1


def batches_per_epoch(images: int, batch_size: int) -> int:
    # A final batch of one image is dropped: batch norm cannot train on it.
    full, rest = divmod(images, batch_size)
    return full + (1 if rest > 1 else 0)


class LearningRateController:
    """Moves the optimizer's lr; the training loop calls it at three points."""

    def __init__(self, optimizer: Optimizer, spec: JobSpec, train_images: int) -> None:
        self.optimizer = optimizer
        self.spec = spec
        self.schedule = spec.schedule
        self.batchwise = self.schedule.name in BATCHWISE_SCHEDULES
        self.steps_per_epoch = [
            batches_per_epoch(train_images, spec.batch_size_for_epoch(epoch))
            for epoch in range(spec.epochs)
        ]
        warmup_epochs = self.schedule.warmup_epochs
        self.warmup_steps = sum(self.steps_per_epoch[:warmup_epochs])
        self.warmup = (
            lr_scheduler.LinearLR(
                optimizer,
                start_factor=WARMUP_START_FACTOR,
                end_factor=1.0,
                total_iters=max(self.warmup_steps, 1),
            )
            if warmup_epochs
            else None
        )
        self.steps_taken = 0
        self.scheduler: Any = None
        if self.warmup is None:
            self.scheduler = self._build_main(warmup_epochs)

    def _build_main(self, warmup_epochs: int) -> Any:
        schedule, optimizer = self.schedule, self.optimizer
        epochs_left = self.spec.epochs - warmup_epochs
        steps_left = sum(self.steps_per_epoch[warmup_epochs:])
        if schedule.name == "constant":
            return None
        if schedule.name == "step":
            return lr_scheduler.StepLR(optimizer, schedule.step_size, schedule.gamma)
        if schedule.name == "multistep":
            milestones = [m - warmup_epochs for m in schedule.milestones if m > warmup_epochs]
            return lr_scheduler.MultiStepLR(optimizer, milestones, schedule.gamma)
        if schedule.name == "exponential":
            return lr_scheduler.ExponentialLR(optimizer, schedule.gamma)
        if schedule.name == "cosine":
            return lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=epochs_left, eta_min=schedule.eta_min
            )
        if schedule.name == "plateau":
            return lr_scheduler.ReduceLROnPlateau(
                optimizer,
                factor=schedule.factor,
                patience=schedule.patience,
                threshold=schedule.threshold,
                min_lr=schedule.min_lr,
            )
        if isinstance(schedule, CyclicSchedule):
            step_size_up = schedule.step_size_up or max(
                1,
                round(schedule.cycle_epochs * self.steps_per_epoch[warmup_epochs] / 2)
                if schedule.cycle_epochs
                else 1,
            )
            return lr_scheduler.CyclicLR(
                optimizer,
                base_lr=schedule.base_lr,
                max_lr=schedule.max_lr,
                step_size_up=step_size_up,
                mode=schedule.mode,
                gamma=schedule.gamma,
                cycle_momentum=self._cycles_momentum(schedule.cycle_momentum),
            )
        if isinstance(schedule, OneCycleSchedule):
            return lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=schedule.max_lr or self.spec.optimizer.lr,
                total_steps=max(steps_left, 1),
                pct_start=schedule.pct_start,
                anneal_strategy=schedule.anneal_strategy,
                div_factor=schedule.div_factor,
                final_div_factor=schedule.final_div_factor,
                three_phase=schedule.three_phase,
                cycle_momentum=self._cycles_momentum(schedule.cycle_momentum),
            )
        raise ValueError(f"no scheduler for {schedule.name!r}")

    def _cycles_momentum(self, asked: bool) -> bool:
        # Off unless asked for: torch would otherwise replace the spec's momentum with its own
        # cycle (0.85 to 0.95). Adam-style optimizers have no momentum of that kind to cycle.
        return asked and float(self.optimizer.defaults.get("momentum", 0.0)) > 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def after_batch(self) -> None:
        self.steps_taken += 1
        if self.warmup is not None and self.steps_taken <= self.warmup_steps:
            self.warmup.step()
            if self.steps_taken == self.warmup_steps:
                self._end_warmup()
            return
        if self.batchwise and self.scheduler is not None:
            self.scheduler.step()

    def _end_warmup(self) -> None:
        # The main schedule starts from the full lr the warm-up reached.
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.warmup = None
        self.scheduler = self._build_main(self.schedule.warmup_epochs)

    def after_epoch(self, epoch: int, monitored_loss: float) -> None:
        """`monitored_loss` is what a plateau schedule watches: the validation loss when the
        job has one."""
        if self.batchwise or self.scheduler is None or epoch < self.schedule.warmup_epochs:
            return
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(monitored_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_taken": self.steps_taken,
            "warmup": self.warmup.state_dict() if self.warmup is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Call before the optimizer's load_state_dict: the lr lives in its param groups, and
        building the main schedule here may move it."""
        self.steps_taken = state["steps_taken"]
        if self.warmup is not None and state.get("warmup") is not None:
            self.warmup.load_state_dict(state["warmup"])
        elif self.warmup is not None:
            self.warmup = None
            self.scheduler = self._build_main(self.schedule.warmup_epochs)
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
