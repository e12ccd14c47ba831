"""The rows of `benchmarks.peers`: one training run of a workload, with or without a gradient-statistics tool.

Every row trains the workload's network (same seed, same batches, plain SGD) for `warmup + steps + 1`
optimizer steps and returns the seconds per step from the start of step `warmup` to the start of step
`warmup + steps` (so each timed step holds all of its own work, logging included), and what the tool
recorded, as numbers per step over the whole run. A tool that cannot run on a workload raises
`CannotRun`, with the reason the tool gave.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from benchmarks.peer_workloads import Workload, loss_fn

LR = 0.01  # plain SGD for every row: Cockpit's Alpha quantity assumes SGD


class CannotRun(Exception):
    """The tool does not support this workload (or is not installed); the message says why."""


@dataclass
class Plan:
    """How long each run is, and where tools may write."""

    warmup: int
    steps: int
    tmp: Path

    @property
    def max_steps(self) -> int:
        """One step past the last timed one: the clock stops at that step's start."""
        return self.warmup + self.steps + 1


@dataclass
class Counts:
    """What a tool recorded over a run: per-layer (or per-parameter) scalars and histograms, global numbers."""

    layer_scalars: int = 0
    layer_histograms: int = 0
    global_numbers: int = 0


@dataclass
class Outcome:
    """Seconds per timed step and, per step of the run, what the tool recorded."""

    step_s: float
    counts: Counts = field(default_factory=Counts)
    steps: int = 0
    keys: list[str] | None = None  # the probe's first record's keys (for the tests)

    def per_step(self) -> dict[str, float]:
        """The counts divided by the number of steps the run took."""
        c, n = self.counts, max(self.steps, 1)
        return {
            "layer_scalars": c.layer_scalars / n,
            "layer_histograms": c.layer_histograms / n,
            "global_numbers": c.global_numbers / n,
        }


@dataclass(frozen=True)
class Row:
    """One line of the table: a label, the modules it needs and how to run it."""

    key: str
    label: str
    needs: tuple[str, ...]
    run: Callable[[Workload, Plan], Outcome]
    setting: str = ""  # the comparable probe row for a peer: "probe1" (every step) or "probe10"
    # A row whose step costs ~100× Lightning's (Cockpit's per-sample gradients) is timed on fewer steps, in the
    # first round only: a drift of the machine cannot change its verdict, and the full run stays ~10 min.
    max_steps: int | None = None
    max_rounds: int | None = None

    def missing(self) -> list[str]:
        """The modules this row needs that are not importable here."""
        return [m for m in self.needs if importlib.util.find_spec(m) is None]


# -- the Lightning side ----------------------------------------------------------------------------------


class Lit(pl.LightningModule):
    """Any network and the workload's loss, trained with plain SGD; subclasses add a tool."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return loss_fn(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=LR)


class StepClock(pl.Callback):
    """Perf-counter at the start of step `warmup` and of step `warmup + steps`."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.t0 = self.t1 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.plan.warmup:
            self.t0 = time.perf_counter()
        elif trainer.global_step == self.plan.warmup + self.plan.steps:
            self.t1 = time.perf_counter()

    @property
    def step_s(self) -> float:
        """Seconds per timed step."""
        return (self.t1 - self.t0) / self.plan.steps


def fit(
    lit: pl.LightningModule, workload: Workload, plan: Plan, callbacks: list[pl.Callback] = (), **trainer_args: Any
) -> tuple[float, pl.Trainer]:
    """Lightning's Trainer on CPU, no validation, no checkpoints, no progress bar; (seconds per step, trainer)."""
    clock = StepClock(plan)
    args = {"logger": False, **trainer_args}
    trainer = pl.Trainer(
        max_steps=plan.max_steps,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, clock],
        **args,
    )
    trainer.fit(lit, train_dataloaders=workload.loader())
    if trainer.global_step != plan.max_steps:
        raise CannotRun(f"stopped after {trainer.global_step} of {plan.max_steps} steps")
    return clock.step_s, trainer


# -- baselines --------------------------------------------------------------------------------------------


def plain(workload: Workload, plan: Plan) -> Outcome:
    """A hand-written loop: forward, loss, zero_grad, backward, step."""
    net = workload.model()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    batches = itertools.cycle(workload.loader())
    t0 = t1 = 0.0
    for step in range(plan.max_steps):
        if step == plan.warmup:
            t0 = time.perf_counter()
        elif step == plan.warmup + plan.steps:
            t1 = time.perf_counter()
        x, y = next(batches)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Outcome((t1 - t0) / plan.steps, steps=plan.max_steps)


def lightning(workload: Workload, plan: Plan) -> Outcome:
    """Lightning's Trainer, nothing recorded: the reference of every ratio."""
    step_s, _ = fit(Lit(workload.model()), workload, plan)
    return Outcome(step_s, steps=plan.max_steps)


# -- peers ------------------------------------------------------------------------------------------------


def _extend(net: nn.Module) -> nn.Module:
    """BackPACK's `extend`; a network that is not one Sequential chain needs its converter (torch.fx)."""
    from backpack import extend

    return extend(net, use_converter=not isinstance(net, nn.Sequential))


def _backpack_error(error: Exception) -> CannotRun:
    """BackPACK's (or Cockpit's) own words: the first sentence."""
    text = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else ""
    return CannotRun(f"{type(error).__name__}: {text}"[:200])


class BackpackLit(Lit):
    """BackPACK's first-order extensions in every backward pass, each reduced to one scalar per parameter."""

    def __init__(self, net: nn.Module) -> None:
        from backpack import extend

        super().__init__(_extend(net))
        self.loss = extend(nn.CrossEntropyLoss())
        self.recorded: list[list[float]] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        out = self.net(x)
        return self.loss(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        from backpack import backpack
        from backpack.extensions import SumGradSquared, Variance

        with backpack(Variance(), SumGradSquared()):
            loss.backward(*args, **kwargs)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # The per-sample variance and second moment of each parameter's gradient, as its mean over entries:
        # two scalars per parameter tensor, one host copy per step (as the probe does).
        values = [
            s
            for p in self.net.parameters()
            if hasattr(p, "variance")
            for s in (p.variance.mean(), p.sum_grad_squared.mean())
        ]
        self.recorded.append(torch.stack(values).tolist() if values else [])


def backpack_row(workload: Workload, plan: Plan) -> Outcome:
    """BackPACK (Variance + SumGradSquared) every step."""
    try:
        lit = BackpackLit(workload.model())
        step_s, _ = fit(lit, workload, plan)
    except (NotImplementedError, AssertionError, RuntimeError, TypeError, ValueError) as e:
        raise _backpack_error(e) from e
    return Outcome(step_s, Counts(layer_scalars=sum(map(len, lit.recorded))), plan.max_steps)


class CockpitLit(BackpackLit):
    """Cockpit's "economy" quantities in every backward pass (no plotter)."""

    def __init__(self, net: nn.Module) -> None:
        from cockpit import Cockpit
        from cockpit.utils.configuration import configuration

        super().__init__(net)
        self.cockpit = Cockpit(self.net.parameters(), quantities=configuration("economy"))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        out = self.net(x)
        out, y = out.reshape(-1, out.shape[-1]), y.reshape(-1)
        self.info = {
            "batch_size": x.shape[0],
            "individual_losses": nn.functional.cross_entropy(out, y, reduction="none"),
            "optimizer": self.trainer.optimizers[0],
        }
        return self.loss(out, y)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        step = self.global_step
        with self.cockpit(step, info={**self.info, "loss": loss}):
            loss.backward(create_graph=self.cockpit.create_graph(step))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        pass


# Cockpit's economy quantities that hold one number per parameter tensor; the others are network-wide.
COCKPIT_PER_PARAMETER = {"GradNorm", "UpdateSize", "Distance"}


def _numbers(value: Any) -> int:
    """How many numbers a recorded value holds (a histogram counts once)."""
    if isinstance(value, dict):
        return 1 if {"hist", "edges"} & set(value) else sum(_numbers(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_numbers(v) for v in value)
    return 1


def cockpit_counts(output: dict[int, dict[str, Any]]) -> Counts:
    """Per-parameter scalars, histograms and network-wide numbers in Cockpit's output."""
    counts = Counts()
    for quantities in output.values():
        for name, value in quantities.items():
            if name == "GradHist1d":
                counts.global_numbers += 1  # one histogram of all gradient entries of the network
            elif name in COCKPIT_PER_PARAMETER:
                counts.layer_scalars += _numbers(value)
            else:
                counts.global_numbers += _numbers(value)
    return counts


def cockpit_row(workload: Workload, plan: Plan) -> Outcome:
    """Cockpit, configuration("economy"), every step, CockpitPlotter off."""
    try:
        lit = CockpitLit(workload.model())
        step_s, _ = fit(lit, workload, plan)
    except (NotImplementedError, AssertionError, RuntimeError, TypeError, ValueError, KeyError) as e:
        raise _backpack_error(e) from e
    return Outcome(step_s, cockpit_counts(lit.cockpit.get_output()), plan.max_steps)


class HistogramEvery(pl.Callback):
    """TensorBoard: a histogram of every parameter and of its gradient every `every` steps."""

    def __init__(self, logdir: Path, every: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))
        self.every = every
        self.histograms = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        for name, p in pl_module.net.named_parameters():
            self.writer.add_histogram(name, p, step)
            self.writer.add_histogram(f"{name}.grad", p.grad, step)
            self.histograms += 2


def tensorboard_row(workload: Workload, plan: Plan) -> Outcome:
    """SummaryWriter.add_histogram of every parameter and gradient every 10 steps."""
    hist = HistogramEvery(plan.tmp / "tensorboard", every=10)
    try:
        step_s, _ = fit(Lit(workload.model()), workload, plan, [hist])
    finally:
        hist.writer.close()
    return Outcome(step_s, Counts(layer_histograms=hist.histograms), plan.max_steps)


class WandbLoss(pl.Callback):
    """The usual companion of wandb.watch: the loss logged every `every` steps, which commits the histograms."""

    def __init__(self, run: Any, every: int) -> None:
        self.run, self.every = run, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1
        if step % self.every == 0:
            self.run.log({"loss": float(outputs["loss"])}, step=step)


def wandb_row(workload: Workload, plan: Plan) -> Outcome:
    """wandb.watch(model, log="all", log_freq=10), offline, the loss logged every 10 steps."""
    import wandb

    run = wandb.init(
        mode="offline", dir=str(plan.tmp), project="peers", settings=wandb.Settings(console="off", silent=True)
    )
    counted = {"histograms": 0}
    log = run._log  # counts what watch's hooks log (they call `wandb.run._log`), then logs it

    def counting_log(data: dict, *args: Any, **kwargs: Any) -> Any:
        counted["histograms"] += sum(k.startswith(("parameters/", "gradients/")) for k in data)
        return log(data, *args, **kwargs)

    run._log = counting_log
    try:
        lit = Lit(workload.model())
        wandb.watch(lit.net, log="all", log_freq=10)
        step_s, _ = fit(lit, workload, plan, [WandbLoss(run, every=10)])
    finally:
        run.finish()
    return Outcome(step_s, Counts(layer_histograms=counted["histograms"]), plan.max_steps)


class GradNormLit(Lit):
    """Lightning's documented route: `grad_norm` in on_before_optimizer_step, logged every step."""

    recorded = 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        from pytorch_lightning.utilities import grad_norm

        norms = grad_norm(self.net, norm_type=2)
        self.recorded += len(norms)
        self.log_dict(norms)


def grad_norm_row(workload: Workload, plan: Plan) -> Outcome:
    """grad_norm per parameter (and the total) every step, through MLFlowLogger on a SQLite store."""
    from pytorch_lightning.loggers import MLFlowLogger

    logger = MLFlowLogger(
        experiment_name="peers",
        tracking_uri=f"sqlite:///{plan.tmp / 'mlflow.db'}",
        artifact_location=(plan.tmp / "artifacts").as_uri(),
    )
    lit = GradNormLit(workload.model())
    step_s, trainer = fit(lit, workload, plan, logger=logger, log_every_n_steps=1)
    total = trainer.global_step  # one "grad_2.0_norm_total" per step, the rest one per parameter tensor
    return Outcome(step_s, Counts(layer_scalars=lit.recorded - total, global_numbers=total), plan.max_steps)
