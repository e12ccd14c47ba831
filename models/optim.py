"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

Params = Iterable[nn.Parameter]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, lr, wd, m: torch.optim.SGD(p, lr=lr, weight_decay=wd),
    "momentum": lambda p, lr, wd, m: torch.optim.SGD(p, lr=lr, momentum=m, weight_decay=wd),
    "nesterov": lambda p, lr, wd, m: torch.optim.SGD(p, lr=lr, momentum=m, nesterov=True, weight_decay=wd),
    "rmsprop": lambda p, lr, wd, m: torch.optim.RMSprop(p, lr=lr, weight_decay=wd),
    "adagrad": lambda p, lr, wd, m: torch.optim.Adagrad(p, lr=lr, weight_decay=wd),
    "adam": lambda p, lr, wd, m: torch.optim.Adam(p, lr=lr, weight_decay=wd),
    "adamw": lambda p, lr, wd, m: torch.optim.AdamW(p, lr=lr, weight_decay=wd),
}

SCHEDULES: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler] | None] = {
    "none": None,
    # ×0.1 at one third and two thirds of the run.
    "step": lambda opt, lr, steps: torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps // 3), gamma=0.1),
    "cosine": lambda opt, lr, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
    # One-cycle with `lr` as the peak (Smith & Topin 2019).
    "onecycle": lambda opt, lr, steps: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps),
}


def make_optimizer(
    name: str, params: Params, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """Build the named optimizer."""
    return OPTIMIZERS[name](params, lr, weight_decay, momentum)


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, *, lr: float, max_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Build the named per-step schedule, or None for a constant learning rate."""
    factory = SCHEDULES[name]
    return None if factory is None else factory(optimizer, lr, max_steps)
