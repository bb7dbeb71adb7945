"""torch optimizers from the spec's `optimizer` object."""

from collections.abc import Callable, Iterable

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer, RMSprop

from shared.spec import AdamSpec, AdamWSpec, RMSpropSpec, SGDSpec

OptimizerSpec = SGDSpec | AdamSpec | AdamWSpec | RMSpropSpec
Params = Iterable[torch.nn.Parameter]

BUILDERS: dict[str, Callable[[Params, OptimizerSpec], Optimizer]] = {
    "sgd": lambda params, s: SGD(params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                                 weight_decay=s.weight_decay),
    "adam": lambda params, s: Adam(params, lr=s.lr, betas=s.betas, eps=s.eps,
                                   weight_decay=s.weight_decay),
    "adamw": lambda params, s: AdamW(params, lr=s.lr, betas=s.betas, eps=s.eps,
                                     weight_decay=s.weight_decay),
    "rmsprop": lambda params, s: RMSprop(params, lr=s.lr, alpha=s.alpha, eps=s.eps,
                                         momentum=s.momentum, weight_decay=s.weight_decay),
}


def build_optimizer(params: Params, spec: OptimizerSpec) -> Optimizer:
    return BUILDERS[spec.name](params, spec)
