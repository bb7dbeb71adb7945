"""torch optimizers from the spec's `optimizer` object."""

from collections.abc import Iterable

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer, RMSprop

from shared.spec import AdamSpec, AdamWSpec, RMSpropSpec, SGDSpec

OptimizerSpec = SGDSpec | AdamSpec | AdamWSpec | RMSpropSpec
Params = Iterable[torch.nn.Parameter]


def build_optimizer(params: Params, spec: OptimizerSpec) -> Optimizer:
    # AdamW first: its spec is a subclass of Adam's.
    if isinstance(spec, AdamWSpec):
        return AdamW(
            params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay
        )
    if isinstance(spec, AdamSpec):
        return Adam(
            params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay
        )
    if isinstance(spec, RMSpropSpec):
        return RMSprop(
            params,
            lr=spec.lr,
            alpha=spec.alpha,
            eps=spec.eps,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
        )
    if isinstance(spec, SGDSpec):
        return SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    # A stored spec trains exactly what it names: never a default in place of the unknown.
    name = getattr(spec, "name", None)
    raise TypeError(f"no optimizer for {type(spec).__name__} (name {name!r})")
