"""Optimizers and schedules are wired as configured: class, hyper-parameters, the step taken, lr over steps."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from models.optim import OPTIMIZERS, SCHEDULES
from pipelines import train
from pipelines.config import ConfigError, RunConfig

LR, WD, MOMENTUM = 0.03, 1e-3, 0.8

# name → (torch class, the param-group entries the config must set)
EXPECTED = {
    "sgd": (torch.optim.SGD, {"lr": LR, "weight_decay": WD, "momentum": 0, "nesterov": False}),
    "momentum": (torch.optim.SGD, {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM, "nesterov": True}),
    "rmsprop": (torch.optim.RMSprop, {"lr": LR, "weight_decay": WD}),
    "adagrad": (torch.optim.Adagrad, {"lr": LR, "weight_decay": WD}),
    "adam": (torch.optim.Adam, {"lr": LR, "weight_decay": WD}),
    "adamw": (torch.optim.AdamW, {"lr": LR, "weight_decay": WD}),
}


def tiny(**overrides) -> RunConfig:
    """A 2×8 MLP on digits: enough to take real optimizer steps in well under a second."""
    fields = dict(depth=2, width=8, batch_size=16, max_steps=6, lr=LR, weight_decay=WD, momentum=MOMENTUM)
    return RunConfig(**{**fields, **overrides})


def optimizer_and_schedule(cfg: RunConfig):
    """What the LitModel hands Lightning for `cfg`."""
    _, lit = train.build(cfg)
    out = lit.configure_optimizers()
    return (out["optimizer"], out["lr_scheduler"]) if isinstance(out, dict) else (out, None)


def test_every_optimizer_is_covered() -> None:
    assert set(EXPECTED) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_optimizer_class_and_hyperparameters(name: str) -> None:
    cls, expected = EXPECTED[name]
    opt, schedule = optimizer_and_schedule(tiny(optimizer=name))
    assert type(opt) is cls and schedule is None
    group = opt.param_groups[0]
    for key, value in expected.items():
        assert group[key] == value, (name, key)
    if cls is torch.optim.SGD:
        assert group["dampening"] == 0


class StepWatcher(pl.Callback):
    """Records, before every optimizer step, the learning rate, the parameters and their (clipped) gradients."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.before: list[list[torch.Tensor]] = []
        self.grads: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])
        params = [p for p in pl_module.parameters() if p.grad is not None]
        self.before.append([p.detach().clone() for p in params])
        self.grads.append([p.grad.detach().clone() for p in params])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append([p.detach().clone() for p in pl_module.parameters() if p.grad is not None])


def fit(cfg: RunConfig) -> StepWatcher:
    """Train `cfg` through the pipeline's own Trainer (no probe, no MLflow) and watch every step."""
    torch.manual_seed(cfg.seed)
    data, lit = train.build(cfg)
    watcher = StepWatcher()
    train.make_trainer(cfg, [watcher], progress_bar=False).fit(lit, datamodule=data)
    assert len(watcher.lrs) == cfg.max_steps
    return watcher


def test_sgd_takes_the_textbook_step() -> None:
    """W ← W − η(∇W + λW) on every step, exactly (weight decay is L2 added to the gradient in torch's SGD)."""
    watched = fit(tiny(optimizer="sgd", max_steps=3))
    for before, grads, after in zip(watched.before, watched.grads, watched.after):
        for w, g, w_next in zip(before, grads, after):
            torch.testing.assert_close(w_next, w - LR * (g + WD * w), rtol=1e-6, atol=1e-7)


def test_momentum_accumulates_velocity() -> None:
    """v ← μv + (∇W + λW); W ← W − ηv, checked over three steps against a hand-kept velocity."""
    watched = fit(tiny(optimizer="momentum", max_steps=3))
    velocity = [torch.zeros_like(w) for w in watched.before[0]]
    for before, grads, after in zip(watched.before, watched.grads, watched.after):
        for i, (w, g, w_next) in enumerate(zip(before, grads, after)):
            velocity[i] = MOMENTUM * velocity[i] + g + WD * w
            torch.testing.assert_close(w_next, w - LR * velocity[i], rtol=1e-5, atol=1e-7)


def test_adam_first_step_moves_every_weight_by_about_lr() -> None:
    """Adam's bias-corrected first step is η·g/(|g| + ε): about η for every weight with a non-tiny gradient."""
    watched = fit(tiny(optimizer="adam", weight_decay=0.0, max_steps=1))
    for w, g, w_next in zip(watched.before[0], watched.grads[0], watched.after[0]):
        big = g.abs() > 1e-4
        torch.testing.assert_close((w - w_next)[big], LR * torch.sign(g[big]), rtol=1e-3, atol=1e-7)


def expected_lrs(schedule: str, lr: float, steps: int) -> list[float]:
    """The learning rate used at each step, from the schedule's closed form."""
    if schedule == "none":
        return [lr] * steps
    if schedule == "step":  # ×0.1 at one third and at two thirds of the run
        size = max(1, steps // 3)
        return [lr * 0.1 ** (t // size) for t in range(steps)]
    if schedule == "cosine":
        return [lr * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]
    if schedule == "onecycle":  # torch defaults: start lr/25, peak at 30 % of the steps, end lr/25/1e4, cosine
        start, end, peak = lr / 25, lr / 25 / 1e4, 0.3 * steps - 1

        def cos(a: float, b: float, frac: float) -> float:
            return b + (a - b) * (1 + math.cos(math.pi * frac)) / 2

        return [
            cos(start, lr, t / peak) if t <= peak else cos(lr, end, (t - peak) / (steps - 1 - peak))
            for t in range(steps)
        ]
    raise AssertionError(schedule)


def test_every_schedule_is_covered() -> None:
    assert set(SCHEDULES) == {"none", "step", "cosine", "onecycle"}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_learning_rate_over_steps(schedule: str) -> None:
    """The lr each optimizer step used, through the real Trainer (the schedule steps once per optimizer step)."""
    steps = 10  # onecycle's peak lands on step 2 exactly (0.3·10 − 1)
    watched = fit(tiny(optimizer="momentum", schedule=schedule, max_steps=steps))
    assert watched.lrs == pytest.approx(expected_lrs(schedule, LR, steps), rel=1e-9, abs=1e-12)
    if schedule == "onecycle":
        assert max(watched.lrs) == pytest.approx(LR) and watched.lrs[0] == pytest.approx(LR / 25)


def test_full_batch_and_batch_of_one() -> None:
    """batch_size ≥ the training set gives full-batch gradient descent; batch_size=1 gives per-example SGD."""
    data, _ = train.build(tiny(batch_size=100_000))
    data.setup("fit")
    batches = list(data.train_dataloader())
    n_train = len(data.train_dataloader().dataset)
    assert len(batches) == 1 and len(batches[0][0]) == n_train > 1000
    data, _ = train.build(tiny(batch_size=1))
    data.setup("fit")
    assert len(next(iter(data.train_dataloader()))[0]) == 1


@pytest.mark.parametrize(("field", "value"), [("optimizer", "lbfgs"), ("schedule", "warmup")])
def test_unknown_optimizer_or_schedule_is_rejected(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        tiny(**{field: value})
    assert value in str(err.value)
